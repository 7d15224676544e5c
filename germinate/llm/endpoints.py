"""Several OpenAI-compatible servers of one model (say one vLLM per GPU) as one backend.

Each request goes to the least busy server in rotation, within that server's own concurrency
limit. A server that refuses connections, or fails several requests in a row (5xx, timeouts),
leaves the rotation for a cool-down that doubles while it keeps failing; the last server in
rotation never leaves it, so one server behaves as a plain client of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from germinate.llm.base import Backend, Completion, Request, ServerDown
from germinate.llm.openai_compat import OpenAIBackend

log = logging.getLogger(__name__)

FAILURES_TO_LEAVE = 3  # failed requests in a row that take a server out of rotation
COOLDOWN_S = 30.0
MAX_COOLDOWN_S = 300.0


class Server:
    def __init__(self, backend: OpenAIBackend, concurrency: int):
        self.backend = backend
        self.concurrency = concurrency
        self.limit = asyncio.Semaphore(concurrency)
        self.in_flight = 0
        self.sent = 0
        self.failures = 0
        self.cooldown_s = COOLDOWN_S
        self.out_until = 0.0

    def load(self) -> tuple[float, int]:
        return self.in_flight / self.concurrency, self.sent


class SpreadBackend(Backend):
    def __init__(self, servers: list[Server]):
        self.servers = servers
        self.model = servers[0].backend.model

    def _in_rotation(self) -> list[Server]:
        now = time.monotonic()
        return [s for s in self.servers if s.out_until <= now]

    def _failed(self, server: Server, error: ServerDown) -> None:
        server.failures += 1
        if not (error.refused or server.failures >= FAILURES_TO_LEAVE):
            return
        others = [s for s in self._in_rotation() if s is not server]
        if not others or server.out_until > time.monotonic():
            return
        server.out_until = time.monotonic() + server.cooldown_s
        log.warning("%s left the rotation for %.0fs (%s)", server.backend.base_url, server.cooldown_s, error)
        server.cooldown_s = min(server.cooldown_s * 2, MAX_COOLDOWN_S)

    async def complete(self, request: Request, schema: dict[str, Any] | None) -> Completion:
        # Busy-ness counts a request from the moment it is sent here, so a burst spreads out.
        server = min(self._in_rotation() or self.servers, key=Server.load)
        server.in_flight += 1
        server.sent += 1
        try:
            async with server.limit:
                completion = await server.backend.complete(request, schema)
        except ServerDown as exc:
            self._failed(server, exc)
            raise
        finally:
            server.in_flight -= 1
        server.failures, server.cooldown_s = 0, COOLDOWN_S
        return completion

    async def close(self) -> None:
        for server in self.servers:
            await server.backend.close()
