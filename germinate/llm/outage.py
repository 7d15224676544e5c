"""Outages pause a run instead of draining it.

A request the server did not answer (refused, dropped, timed out, 429, 5xx) fails either
on its own or because the server is gone. After a few such failures in a row, one tiny
request (the ping) asks the server. If it answers, the failures were the requests' own and
count as their tries. If not, the run pauses: requests wait for the server instead of
spending their retries, the ping is repeated with backoff, and the run goes on when the
server answers again, or stops once `patience_s` has passed without an answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from germinate.errors import UserError
from germinate.llm.errors import ServerLost, TransientError

log = logging.getLogger(__name__)

FAILURES_TO_CHECK = 3  # unanswered requests in a row before the server is asked whether it is there
MAX_PING_INTERVAL_S = 30.0


class Outage:
    def __init__(
        self, ping: Callable[[], Awaitable[object]], where: str, patience_s: float, on_pause: Callable[[], None]
    ):
        """`ping` raises TransientError while the server does not answer; `where` names it for the user;
        `on_pause` runs when requests start to wait (the cache is flushed then)."""
        self._ping = ping
        self._on_pause = on_pause
        self.where = where
        self.patience_s = patience_s
        self._failures = 0  # unanswered requests since the last answer
        self._check: asyncio.Future[bool] | None = None  # a ping in flight: does the server answer?
        self._running = asyncio.Event()
        self._running.set()
        self._stopped: UserError | None = None

    async def ready(self) -> None:
        """Return when a request may be sent; raise ServerLost once the patience has run out."""
        if not self._running.is_set():
            await self._running.wait()
        if self._stopped is not None:
            raise self._stopped

    def answered(self) -> None:
        self._failures = 0

    async def counts(self) -> bool:
        """Whether an unanswered try counts against its request's retries. False during an outage:
        the request then waits in `ready()` and is sent again when the server is back."""
        if not self._running.is_set() or self._stopped is not None:
            return False
        self._failures += 1
        if self._failures < FAILURES_TO_CHECK:
            return True
        if self._check is None:

            async def check() -> bool:
                try:
                    await self._ping()
                except TransientError as exc:
                    self._pause(str(exc))
                    return False
                except Exception:  # it answered, if only to refuse: the requests will hear it themselves
                    pass
                finally:
                    self._check = None
                self._failures = 0
                return True

            self._check = asyncio.ensure_future(check())
        return await asyncio.shield(self._check)

    def _pause(self, error: str) -> None:
        if not self._running.is_set() or self._stopped is not None:
            return
        self._running.clear()
        log.warning(
            "%s stopped answering (%s); requests wait for it, up to %gs (llm.outage_timeout_s)",
            self.where, error.rstrip("."), self.patience_s,
        )
        self._on_pause()
        asyncio.ensure_future(self._wait_for_server(error, time.monotonic()))

    async def _wait_for_server(self, error: str, since: float) -> None:
        interval = 1.0
        while (left := self.patience_s - (time.monotonic() - since)) > 0:
            await asyncio.sleep(min(interval, left))
            try:
                await self._ping()
            except TransientError as exc:
                error, interval = str(exc), min(2 * interval, MAX_PING_INTERVAL_S)
                continue
            except Exception:
                pass
            log.warning("%s answers again after %.0fs; the run goes on", self.where, time.monotonic() - since)
            self._failures = 0
            self._running.set()
            return
        self.stop(ServerLost(
            f"llm: {self.where} did not answer for {self.patience_s:g}s (llm.outage_timeout_s; last: "
            f"{error.rstrip('.')}); what finished is kept: run the same command again to resume"
        ))

    def stop(self, reason: UserError) -> None:
        """No request goes out any more: those waiting, and every later one, raise `reason`."""
        if self._stopped is None:
            self._stopped = reason
        self._running.set()
