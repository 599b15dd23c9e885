"""The bearer-token rule both ends share: the service refuses such a token at load and every
client refuses to send it, with a reason that never quotes the token; and how both read a
token file.

Light on purpose (the standard library and mpsctl.errors): ``probe`` and ``status`` import
the client.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mpsctl.errors import ConfigError
from mpsctl.storage import open_regular

#: what a token may contain: visible ASCII, no whitespace (RFC 6750's b64token is a subset).
#: HTTP header values are bytes and clients encode other characters differently (curl
#: sends UTF-8, others latin-1), so a non-ASCII token would work with one client only.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be used as a bearer token, or None when it can.

    The reason never quotes the token (it is a secret).
    """
    if not token:
        return "is empty"
    if _TOKEN_CHARS.fullmatch(token):
        return None
    if any(ch in "\r\n" for ch in token):
        return "must be one line"
    if not token.isascii():
        return (
            "contains non-ASCII characters; use visible ASCII only "
            "(clients encode other characters differently in the Authorization header)"
        )
    return "contains spaces or control characters; use visible ASCII only"


def read_token_text(path: Path) -> tuple[str, int]:
    """A token file's text, stripped (empty when the file is), and the file's mode.

    ConfigError when it cannot be read or is not UTF-8; the text is never quoted.
    """
    try:
        # a regular file only: a FIFO would hang `serve` and `ask`, /dev/zero never ends
        fd = open_regular(path)
        try:
            # the mode of the file actually read, not of whatever the path names later
            mode = os.fstat(fd).st_mode
            data = os.read(fd, 64 * 1024)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8").strip(), mode
    except UnicodeDecodeError:
        raise ConfigError(f"token file {path} is not UTF-8 text") from None
