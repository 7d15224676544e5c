"""Where stage progress goes. Counted here (the Prefect UI's progress artifacts read the counts);
shown by a listener: silent by default, the CLI installs a rich progress display."""

from __future__ import annotations

import threading
from collections import Counter
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
_done: Counter[str] = Counter()
_lock = threading.Lock()  # shard tasks advance from their own threads


def set_listener(new: ProgressListener) -> None:
    global listener
    listener = new


def start(stage: str, total: int) -> None:
    with _lock:
        _done[stage] = 0
    listener.start(stage, total)


def advance(stage: str, amount: int = 1) -> None:
    with _lock:
        _done[stage] += amount
    listener.advance(stage, amount)


def done(stage: str) -> int:
    with _lock:
        return _done[stage]


def finish(stage: str) -> None:
    listener.finish(stage)
