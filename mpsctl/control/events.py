"""What a long operation tells the operator while it runs: the progress seam of start/stop."""

from __future__ import annotations

import contextlib
from typing import Protocol


class Events(Protocol):
    """What a long operation tells the operator while it runs (stderr in the CLI)."""

    def warn(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...

    def waiting(self, message: str) -> contextlib.AbstractContextManager[object]: ...

    def phase(self, message: str) -> None:
        """What the awaited process is doing now (read from its log), inside ``waiting``;
        may be called from another thread."""


class SilentEvents:
    def warn(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def waiting(self, message: str) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    def phase(self, message: str) -> None:
        pass
