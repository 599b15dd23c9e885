"""``mpsctl --error-log FILE``: a cron job's stderr, appended to a file by mpsctl itself."""

from __future__ import annotations

import os


def open_error_log(path: str) -> str | None:
    """Point this process's stderr (fd 2) at ``path``, appended; why it could not, or None.

    mpsctl opens the log itself instead of the shell's ``2>>LOG``: a shell whose
    redirection fails (a read-only or full MPSCTL_HOME) never runs the command, so the
    watchdog would silently stop. When the log cannot be opened, stderr stays where cron
    sends it (mail) and the failure goes to syslog as well.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        why = f"cannot open the error log {path}: {exc.strerror or exc}; errors go to stderr"
        _to_syslog(why)
        return why
    try:
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    return None


def _to_syslog(message: str) -> None:
    try:
        import syslog
    except ImportError:  # not a Unix: nothing to log to
        return
    syslog.openlog("mpsctl", syslog.LOG_PID, syslog.LOG_USER)
    syslog.syslog(syslog.LOG_WARNING, message)
