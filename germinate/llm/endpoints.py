"""Several OpenAI-compatible servers of one model (say one vLLM per GPU) as one backend.

Each request goes to the least busy server in rotation, within that server's own concurrency
limit. A server that refuses connections, or fails several requests in a row (5xx, timeouts),
leaves the rotation for a cool-down that doubles while it keeps failing, and comes back after
it (so does one that was down when the run started); the last server in rotation never leaves
it, so one server behaves as a plain client of it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from germinate.llm.base import Backend, Completion, Request
from germinate.llm.errors import ServerDown
from germinate.llm.limit import Limit
from germinate.llm.openai_compat import OpenAIBackend

log = logging.getLogger(__name__)

FAILURES_TO_LEAVE = 3  # failed requests in a row that take a server out of rotation
COOLDOWN_S = 30.0
MAX_COOLDOWN_S = 300.0


class Server:
    def __init__(self, backend: OpenAIBackend, concurrency: int, limit: Limit | None = None):
        """`concurrency`: the server's limit for the whole run; `limit`: what this process may send it
        (by default all of it; on Ray, this worker's lease)."""
        self.backend = backend
        self.concurrency = concurrency
        self.limit = limit or Limit(concurrency)
        self.in_flight = 0
        self.sent = 0
        self.failures = 0
        self.cooldown_s = COOLDOWN_S
        self.out_until = 0.0
        self.left_at = 0.0  # when it last left the rotation

    def load(self) -> tuple[float, int]:
        return self.in_flight / self.concurrency, self.sent


class SpreadBackend(Backend):
    def __init__(self, servers: list[Server]):
        self.servers = servers
        self.model = servers[0].backend.model
        self.location = ", ".join(s.backend.location for s in servers)

    def _in_rotation(self) -> list[Server]:
        now = time.monotonic()
        return [s for s in self.servers if s.out_until <= now]

    def _failed(self, server: Server, error: ServerDown, sent_at: float) -> None:
        if sent_at < server.left_at:
            return  # sent before it left: its failure says nothing about the server since it came back
        server.failures += 1
        if not (error.refused or server.failures >= FAILURES_TO_LEAVE):
            return
        now = time.monotonic()
        if server.out_until > now or not [s for s in self._in_rotation() if s is not server]:
            return  # already out, or the last one in rotation: it stays
        server.left_at, server.out_until = now, now + server.cooldown_s
        log.warning("%s left the rotation for %.0fs (%s)", server.backend.base_url, server.cooldown_s, error)
        server.cooldown_s = min(server.cooldown_s * 2, MAX_COOLDOWN_S)

    async def complete(self, request: Request, schema: dict[str, Any] | None) -> Completion:
        # Busy-ness counts a request from the moment it is sent here, so a burst spreads out.
        server = min(self._in_rotation() or self.servers, key=Server.load)
        server.in_flight += 1
        server.sent += 1
        sent_at = time.monotonic()
        try:
            async with server.limit:
                if server.left_at > sent_at:  # it left the rotation while this request queued for it
                    raise ServerDown(f"{server.backend.base_url} left the rotation")
                completion = await server.backend.complete(request, schema)
        except ServerDown as exc:
            self._failed(server, exc, sent_at)
            raise
        finally:
            server.in_flight -= 1
        server.failures, server.cooldown_s = 0, COOLDOWN_S
        return completion

    def describe(self) -> str:
        return ", ".join(f"{s.backend.base_url} ({s.limit.in_use} in flight, {s.limit.waiting} waiting, limit "
                         f"{s.limit.size})" for s in self.servers)

    async def close(self) -> None:
        for server in self.servers:
            await server.backend.close()
