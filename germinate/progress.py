"""Where stage progress goes. Silent by default; the CLI installs a rich progress display."""

from __future__ import annotations

from typing import Protocol


class ProgressListener(Protocol):
    def start(self, stage: str, total: int) -> None: ...

    def advance(self, stage: str, amount: int = 1) -> None: ...

    def finish(self, stage: str) -> None: ...


class Silent:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, amount: int = 1) -> None:
        pass

    def finish(self, stage: str) -> None:
        pass


listener: ProgressListener = Silent()


def set_listener(new: ProgressListener) -> None:
    global listener
    listener = new
