"""A request limit whose size can change while requests hold it.

A server's slots in one process are a fixed number; on Ray they are this worker's lease of the
run's slots, which grows and shrinks as the workers' demand moves (flows/ray_run.py). Shrinking
never takes a slot from a request that holds one: the limit is then over its size until enough
requests finish.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable


class Limit:
    def __init__(self, size: int, on_short: Callable[[], None] | None = None):
        """`on_short` is called when a request finds no free slot while the size is 0 (a lease that
        holds nothing yet: its holder should ask for slots now, not at its next round)."""
        self.size = self._wanted_size = size
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()  # a cancelled one stays until it is reached
        self._woken = 0  # waiters given a slot that have not run yet
        self._on_short = on_short
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        return sum(not waiter.done() for waiter in self._waiters)

    @property
    def held(self) -> int:
        """Slots this limit may have in use before it next hears of its size: its size, or more while
        it shrinks."""
        return max(self.size, self.in_use)

    async def __aenter__(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._apply()  # a size set from another thread before the loop was known
        while self.in_use >= self.size:
            if self.size == 0 and self._on_short:
                self._on_short()
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # woken, then cancelled: the slot goes on
                    self._woken -= 1
                    self._wake()
                raise
            self._woken -= 1
        self.in_use += 1

    async def __aexit__(self, *exc: object) -> None:
        self.in_use -= 1
        self._wake()

    def resize(self, size: int) -> None:
        """Safe from any thread: the new size takes effect on the loop that uses the limit."""
        self._wanted_size = size
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._apply)

    def _apply(self) -> None:
        self.size = self._wanted_size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use + self._woken < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1
