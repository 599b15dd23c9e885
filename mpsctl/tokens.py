"""The bearer-token rule both ends share: the service refuses such a token at load and every
client refuses to send it, with a reason that never quotes the token.

Light on purpose (standard library only): ``probe`` and ``status`` import the client.
"""

from __future__ import annotations

import re

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
