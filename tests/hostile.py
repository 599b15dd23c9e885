"""hypothesis strategies for hostile inputs: files a person or process could put where
mpsctl reads, and settings values built to overflow what is computed from them later."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from hypothesis import strategies as st

#: what can stand at a path mpsctl reads: each builds it at the given path
FileMaker = Callable[[Path], None]


def _regular(data: bytes) -> FileMaker:
    return lambda path: path.write_bytes(data)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _link_to(target: str) -> FileMaker:
    return lambda path: path.symlink_to(target)


def _dangling(path: Path) -> None:
    path.symlink_to(path.with_name("nowhere"))


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


def _sparse(size: int) -> FileMaker:
    def make(path: Path) -> None:
        with path.open("wb") as handle:
            handle.truncate(size)

    return make


def _unreadable(data: bytes) -> FileMaker:
    def make(path: Path) -> None:
        path.write_bytes(data)
        path.chmod(0)

    return make


file_contents = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"\x00" * 64, b"\xff\xfe\xfd", b"a" * 70_000,
                     b"\x1b[2J\x1b]52;c;eA==\x07", b"KEY=value\n" * 3, b'{"pid": 1}',
                     b"[service]\nurl = 1\n"]),
)  # fmt: skip

#: hostile things at a path: FIFOs (a reader would hang), devices that never end, links,
#: directories, sockets, sparse files over any cap, unreadable files, and any bytes
hostile_files: st.SearchStrategy[FileMaker] = st.one_of(
    file_contents.map(_regular),
    st.sampled_from([_fifo, _directory, _dangling, _socket, _link_to("/dev/zero"),
                     _link_to("/dev/urandom"), _sparse(64 * 1024 * 1024)]),
    file_contents.map(_unreadable),
)  # fmt: skip

_huge_numbers = st.sampled_from(
    ["1e9", "1e300", "1e308", "inf", "-inf", "nan", "-0", "9" * 4001, str(2**53 + 1),
     str(2**63), "0x10", "1_000", " 36500 ", "36501", "1e-320"]
)  # fmt: skip
_ports = st.one_of(
    st.integers(min_value=-(2**20), max_value=2**20).map(str),
    st.sampled_from(["", "0", "65535", "65536", "99999", "08", "abc", "1e3", " 80"]),
)
_hosts = st.sampled_from(
    ["127.0.0.1", "localhost", "", "[::1]", "[::1", "h\x1b[2J", "a b", "xn--d1acufc.xn--p1ai",
     "hooks.example", "user:hunter2@h", "@", "%00"]
)  # fmt: skip


def _url(scheme: str, host: str, port: str | None, path: str) -> str:
    return f"{scheme}{host}{'' if port is None else ':' + port}{path}"


hostile_urls = st.builds(
    _url,
    st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "file://", "", "http:/",
                     "javascript:"]),
    _hosts,
    st.none() | _ports,
    st.sampled_from(["", "/", "/services/T0/B0/s3cret", "/?token=hunter2", "/\x1b]52;c;eA==\x07"]),
)  # fmt: skip

#: values for any settings key: numbers past every bound, hostile URLs, control characters
hostile_setting_values = st.one_of(
    _huge_numbers,
    hostile_urls,
    st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
