"""The one masking rule for secrets shown to people: ``config show``, warnings and logs.

- a name that looks like a credential (``TOKEN``, ``API_KEY``, ``password``, ``sig``...):
  its value is replaced by ``****``, whatever the value;
- a URL keeps its scheme, host, port and first path segment; the password of its userinfo,
  the rest of its path and its query are masked: ``https://hooks.slack.com/services/****``,
  ``postgres://app:****@db/prod``. A webhook's path *is* its credential, and which path
  segment holds it differs between services, so no later segment is shown;
- in free text (a command line in ``config show``), every URL is masked that way, and so
  are ``Bearer <token>`` and ``name=value`` pairs whose name looks like a credential;
- in warnings and errors, the same, except that URL paths are kept (they name the service's
  own endpoints, which an operator needs to read); a configured webhook URL is shown through
  :func:`mask_url` by the code that knows it is one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

MASK = "****"

#: names whose values are credentials (any part of the name, any case)
SECRET_NAME = re.compile(
    r"(?i)token|secret|passw|key|auth|sig|credential|cookie|session|private|dsn"
)
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9._~-]*")
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\"]+")
_PAIR = r"(?<![\w-])(-{0,2}[A-Za-z_][\w.-]*)([=:])([^\s&;'\"]+)"
_PAIR_AT = re.compile(f"(?={_PAIR})")
# a quoted value holding a URL is one URL, spaces and all (a refused value is quoted whole)
_QUOTED_URL = re.compile(r"""(['"])([A-Za-z][A-Za-z0-9+.-]*://[^'"\n]*)\1""")


def is_secret_name(name: str) -> bool:
    return SECRET_NAME.search(unquote(name)) is not None


def mask_url(url: str, *, paths: bool = True) -> str:
    """``url`` with its userinfo password, its path past the first segment and its query
    masked; a string that is not a URL is returned as ``mask_text`` would show it. With
    ``paths=False``, the path is kept and only credential-named query values are masked
    (for messages about the service's own URLs, whose paths are no secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced [ in the host: keep only what is surely no secret
        scheme, _, rest = url.partition("://")
        host, slash, _path = rest.partition("/")
        userinfo, at, host = host.rpartition("@")
        return f"{scheme}://{MASK + '@' if at else ''}{host}{'/' + MASK if slash else ''}"
    if not parts.scheme or "://" not in url:
        return _mask_pairs(_BEARER.sub(lambda m: m.group(1) + MASK, url))
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    if not paths:
        query = f"?{_mask_pairs(parts.query)}" if parts.query else ""
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        return f"{parts.scheme}://{netloc}{parts.path}{query}{fragment}"
    segments = parts.path.split("/")
    if len(segments) > 1 and not _PLAIN_SEGMENT.fullmatch(segments[1]):
        segments = ["", MASK]  # a first segment that is no plain name may hide userinfo
    path = "/".join(segments[:2])
    if len(segments) > 2 and any(segments[2:]):
        path += "/" + MASK
    query = f"?{MASK}" if parts.query else ""
    fragment = f"#{MASK}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{path}{query}{fragment}"


def mask_url_like(text: str) -> str:
    """``mask_url`` for a value meant to be a URL, even one typed without its scheme
    (``hooks.example/services/T0/s3cret`` is still a web hook's secret path)."""
    if "://" in text:
        return mask_url(text)
    return mask_url("x://" + text).removeprefix("x://")


def mask_value(name: str, value: str) -> str:
    """How the setting or variable ``name`` with ``value`` is shown."""
    if value and is_secret_name(name):
        return MASK
    return mask_text(value)


def mask_text(text: str, *, paths: bool = True) -> str:
    """``text`` with every URL, bearer token and credential-named ``name=value`` masked
    (``paths``: as :func:`mask_url`)."""
    text = _QUOTED_URL.sub(
        lambda m: m.group(1) + mask_url(m.group(2), paths=paths) + m.group(1), text
    )
    text = _URL.sub(lambda m: mask_url(m.group(0), paths=paths), text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return _mask_pairs(text)


def _mask_pairs(text: str) -> str:
    # Pairs are found at every position, overlapping ones included: in `b:0/?token=S` the
    # pair `b:...` must not hide the `token=S` inside its value.
    spans: list[tuple[int, int]] = []
    for match in _PAIR_AT.finditer(text):
        name, value = match.group(1), match.group(3)
        if value.startswith(MASK) or not is_secret_name(name.lstrip("-")):
            continue
        start = match.start() + len(name) + 1
        spans.append((start, start + len(value)))
    if not spans:
        return text
    out, last = [], 0
    for start, end in sorted(spans):
        if start < last:  # inside a value already masked
            continue
        out.append(text[last:start] + MASK)
        last = end
    out.append(text[last:])
    return "".join(out)


def masked_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for display, sorted, every value under the one rule."""
    return {name: mask_value(name, value) for name, value in sorted(env.items())}
