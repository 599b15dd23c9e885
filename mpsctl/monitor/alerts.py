"""Alerts on verdict changes: a JSON POST and/or a command with the alert on stdin.

One alert per change, not per probe: a cron probe every minute during a two-hour outage
sends one CRITICAL alert and, when the verdict is back to OK, one recovery notice. The last
verdict *delivered* to each target is kept in ``MPSCTL_HOME/alert_state.json`` (written
atomically). A failed delivery leaves that target's state alone, so the next probe tries
again instead of losing the alert.

The POST uses the standard library (``urllib.request``): house rules keep ``requests`` in
``mpsctl/client.py``, which talks to the service, and one small POST needs nothing more.
Nothing here raises for an unreachable target: the probe's exit code stays its verdict.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mpsctl import __version__
from mpsctl.errors import ProbeExit
from mpsctl.masking import mask_url
from mpsctl.monitor.history import history_record
from mpsctl.probe import ProbeResult
from mpsctl.settings import Settings
from mpsctl.storage import atomic_write, open_state_file, read_regular

SCHEMA = "mpsctl.alert/1"
STATE_NAME = "alert_state.json"
LOCK_NAME = "alert_state.lock"
POST_TIMEOUT_S = 5.0
RETRY_DELAY_S = 1.0
COMMAND_TIMEOUT_S = 30.0
#: characters that only a shell understands: such a command runs under /bin/sh -c
_SHELL_SYNTAX = re.compile(r"[|&;<>()$`*?~{}\n]")


@dataclass(frozen=True)
class Target:
    kind: str  # "url" | "command"
    value: str

    @property
    def key(self) -> str:
        return f"{self.kind} {self.value}"

    @property
    def shown(self) -> str:
        """For messages and logs: webhook URLs often carry a secret in the path or query."""
        if self.kind == "url":
            parts = urlsplit(self.value)
            host = parts.hostname or "?"
            port = f":{parts.port}" if parts.port else ""
            return f"url {parts.scheme}://{host}{port}/..."
        try:
            words = shlex.split(self.value)
        except ValueError:
            words = self.value.split()
        return f"command {words[0] if words else '?'}"


@dataclass(frozen=True)
class Delivery:
    target: Target
    kind: str  # "alert" | "recovery"
    verdict: str
    previous: str | None
    ok: bool
    detail: str


def targets_from(url: str | None, command: str | None) -> list[Target]:
    found = []
    if url:
        found.append(Target("url", url))
    if command:
        found.append(Target("command", command))
    return found


# --------------------------------------------------------------------------- state
def state_path(home: Path) -> Path:
    return home / STATE_NAME


def read_state(home: Path) -> dict[str, dict[str, Any]]:
    """target key -> {"verdict", "time"}; an unreadable file is an empty state (alert again)."""
    try:
        data = json.loads(read_regular(state_path(home), follow=False))
    except (OSError, ValueError):
        return {}
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, dict):
        return {}
    return {k: v for k, v in targets.items() if isinstance(v, dict)}


def write_state(home: Path, targets: dict[str, dict[str, Any]]) -> None:
    document = {"schema": "mpsctl.alert-state/1", "targets": targets}
    atomic_write(state_path(home), json.dumps(document, indent=2) + "\n", mode=0o600)


# --------------------------------------------------------------------------- the message
def alert_document(result: ProbeResult, kind: str, previous: str | None) -> dict[str, Any]:
    verdict = result.verdict.name
    hostname = socket.gethostname()
    where = f"{result.service_name} on {hostname}"
    if kind == "recovery":
        headline = f"RECOVERED: {where} is OK again (was {previous})"
    else:
        change = f" (was {previous})" if previous else ""
        headline = f"{verdict}: {where}{change}"
    reasons = result.reasons
    # "text" makes the document usable as is by Slack / Mattermost style incoming webhooks
    text = headline + "".join(f"\n- {r}" for r in reasons)
    return {
        "schema": SCHEMA,
        "kind": kind,
        "time": result.time,
        "hostname": hostname,
        "service": result.service_name,
        "url": result.url,
        "verdict": verdict,
        "previous_verdict": previous,
        "reasons": reasons,
        "death": result.death,
        "text": text,
        "probe": history_record(result, source="alert"),
        "mpsctl_version": __version__,
    }


# --------------------------------------------------------------------------- delivery
def post_json(
    url: str,
    document: dict[str, Any],
    *,
    timeout: float = POST_TIMEOUT_S,
    retries: int = 1,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, str]:
    """POST ``document``; retry once on a network error or a 5xx. Never raises."""
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https"):
        # urllib would also open file:// and ftp:// URLs: an alert target is a web hook
        return False, f"not an http(s) URL: {mask_url(url)!r}"
    body = json.dumps(document, ensure_ascii=False).encode("utf-8")
    detail = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(RETRY_DELAY_S)
        # the scheme is checked above: no file:// or ftp:// through this call
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"mpsctl/{__version__}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return True, f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            detail = f"HTTP {exc.code}"
            if exc.code < 500:
                return False, detail  # a 4xx will not change on retry
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            detail = str(reason) or type(exc).__name__
    return False, detail


def command_argv(command: str) -> list[str]:
    """``shlex.split`` words, or ``/bin/sh -c`` when the command uses shell syntax."""
    if _SHELL_SYNTAX.search(command):
        return ["/bin/sh", "-c", command]
    return shlex.split(command)


def run_command(
    command: str, document: dict[str, Any], *, timeout: float = COMMAND_TIMEOUT_S
) -> tuple[bool, str]:
    """Run ``command`` with the alert JSON on stdin. Never raises."""
    try:
        argv = command_argv(command)
    except ValueError as exc:  # unbalanced quotes
        return False, f"cannot parse the command: {exc}"
    if not argv:
        return False, "empty command"
    env = {
        **os.environ,
        "MPSCTL_ALERT_KIND": str(document["kind"]),
        "MPSCTL_ALERT_VERDICT": str(document["verdict"]),
        "MPSCTL_ALERT_TEXT": str(document["text"]),
    }
    try:
        done = subprocess.run(
            argv,
            input=json.dumps(document, ensure_ascii=False) + "\n",
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except FileNotFoundError:
        return False, f"command not found: {argv[0]}"
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:g} s"
    except OSError as exc:
        return False, str(exc)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        return False, f"exit status {done.returncode}" + (f": {last[-1]}" if last else "")
    return True, "exit status 0"


def deliver(target: Target, document: dict[str, Any]) -> tuple[bool, str]:
    if target.kind == "url":
        return post_json(target.value, document)
    return run_command(target.value, document)


# --------------------------------------------------------------------------- the decision
def change_kind(previous: str | None, verdict: ProbeExit) -> str | None:
    """The alert kind, ``alert`` or ``recovery``; None when there is nothing to send.

    Nothing to send: the verdict did not change, or it is OK with no trouble on record.
    """
    if previous == verdict.name:
        return None
    if verdict is ProbeExit.OK:
        return "recovery" if previous is not None else None
    return "alert"


def notify_on_change(
    home: Path,
    result: ProbeResult,
    targets: list[Target],
    *,
    deliver_to: Callable[[Target, dict[str, Any]], tuple[bool, str]] = deliver,
) -> list[Delivery]:
    """Send what changed since the last delivery to each target; update the state.

    Read, send and write happen under an exclusive lock on ``alert_state.lock``: a cron probe
    and a hand-run probe seeing the same change must not both send it.
    """
    if not targets:
        return []
    with _state_lock(home):
        return _notify_locked(home, result, targets, deliver_to)


@contextmanager
def _state_lock(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = open_state_file(home / LOCK_NAME, os.O_RDWR)
    try:
        # blocking: the holder is another probe delivering, bounded by the delivery timeouts
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _notify_locked(
    home: Path,
    result: ProbeResult,
    targets: list[Target],
    deliver_to: Callable[[Target, dict[str, Any]], tuple[bool, str]],
) -> list[Delivery]:
    state = read_state(home)
    verdict = result.verdict
    deliveries = []
    changed = False
    for target in targets:
        previous = state.get(target.key, {}).get("verdict")
        previous = previous if isinstance(previous, str) else None
        kind = change_kind(previous, verdict)
        if kind is None:
            if previous is None:  # first look, all well: remember OK, send nothing
                state[target.key] = {"verdict": verdict.name, "time": result.time}
                changed = True
            continue
        ok, detail = deliver_to(target, alert_document(result, kind, previous))
        deliveries.append(Delivery(target, kind, verdict.name, previous, ok, detail))
        if ok:
            state[target.key] = {"verdict": verdict.name, "time": result.time}
            changed = True
    if changed:
        write_state(home, state)
    return deliveries


@dataclass(frozen=True)
class WatchdogAlerts:
    """The ``[alerts]`` targets, as the watchdog's sender (``control.watchdog.AlertSender``):
    the watchdog decides what to alert, this sends it."""

    settings: Settings

    def _targets(self) -> list[Target]:
        return targets_from(self.settings.alerts.url, self.settings.alerts.command)

    def send(self, document: dict[str, Any]) -> tuple[bool, str]:
        targets = self._targets()
        if not targets:
            return False, "no [alerts] target"
        sent = [deliver(t, {"schema": SCHEMA, **document}) for t in targets]
        details = "; ".join(f"{t.shown}: {d}" for t, (_ok, d) in zip(targets, sent, strict=True))
        return any(ok for ok, _d in sent), details

    def on_change(self, result: ProbeResult) -> int:
        try:
            sent = notify_on_change(self.settings.home, result, self._targets())
        except OSError:
            return 0  # a full or read-only home: the audit line still says what was seen
        return sum(1 for d in sent if d.ok)
