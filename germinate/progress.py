"""Where stage progress goes. Counted here (the Prefect UI's progress artifacts read the counts);
shown by a listener: silent by default, the CLI installs a rich progress display."""

from __future__ import annotations

import threading
import time
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
_totals: dict[str, int] = {}  # the stages started, in order, with the work planned for each
_finished: set[str] = set()
_lock = threading.Lock()  # shard tasks advance from their own threads
_moved_at = time.monotonic()  # when a stage last advanced


def set_listener(new: ProgressListener) -> None:
    global listener
    listener = new


def reset() -> None:
    """A new run in this process: no stage started yet."""
    with _lock:
        _done.clear()
        _totals.clear()
        _finished.clear()


def start(stage: str, total: int) -> None:
    with _lock:
        _done[stage] = 0
        _totals[stage] = total
        _finished.discard(stage)
    listener.start(stage, total)


def advance(stage: str, amount: int = 1) -> None:
    global _moved_at
    with _lock:
        _done[stage] += amount
        _moved_at = time.monotonic()
    listener.advance(stage, amount)


def moved_at() -> float:
    """When any stage last advanced (time.monotonic)."""
    return _moved_at


def done(stage: str) -> int:
    with _lock:
        return _done[stage]


def finish(stage: str) -> None:
    with _lock:
        _finished.add(stage)
    listener.finish(stage)


def stages() -> list[tuple[str, int, int, bool]]:
    """Every stage started, in order: (stage, done, planned, finished)."""
    with _lock:
        return [(stage, _done[stage], total, stage in _finished) for stage, total in _totals.items()]
