"""Shard tasks on Ray act as one run: `llm.concurrency` bounds the requests in flight of the whole
run, not each worker's, and progress reaches the driver's bars and the Prefect UI while the shards
run. A Ray actor per run hands out the request slots and gathers the progress counts; its name
(unique per run) reaches the shard tasks with their parameters. Wiring only; imported when
`orchestration.task_runner` is ray."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter

import ray

from germinate import progress
from germinate.config import RunConfig
from germinate.llm import concurrency

FORWARD_EVERY_S = 0.5  # how often a worker sends its progress counts to the driver
WAITERS = 100_000  # requests that may wait for a slot at once, across the run's workers


# Waiting for a slot takes a place in the default group; giving one back and the progress counts have
# their own, so they never queue behind the requests that wait for them.
@ray.remote(num_cpus=0, concurrency_groups={"control": 8})
class RunState:
    """Request slots and progress counts of one run. An async actor: its methods share one loop."""

    def __init__(self, slots: int):
        self.slots = asyncio.Semaphore(slots)
        self.counts: Counter = Counter()

    async def acquire(self) -> None:
        await self.slots.acquire()

    @ray.method(concurrency_group="control")
    async def release(self) -> None:
        self.slots.release()

    @ray.method(concurrency_group="control")
    async def advance(self, counts: dict[str, int]) -> None:
        self.counts.update(counts)

    @ray.method(concurrency_group="control")
    async def take(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts


def start(config: RunConfig) -> tuple[str, object]:
    """In the driver, before the shards: the run's state and the name its shard tasks find it by."""
    name = f"germinate-{config.run_id}-{uuid.uuid4().hex[:8]}"
    return name, RunState.options(name=name, max_concurrency=WAITERS).remote(concurrency(config.llm))


def collect(state) -> None:
    """In the driver, while it waits: what the workers did, into this process's progress."""
    for stage, amount in ray.get(state.take.remote()).items():
        progress.advance(stage, amount)


def stop(state) -> None:
    ray.kill(state)


class Slots:
    """An LLM's request slots, taken from the run's state: a slot per request in flight, run-wide."""

    def __init__(self, state):
        self.state = state

    async def __aenter__(self) -> None:
        granted = self.state.acquire.remote()
        try:
            await granted
        except asyncio.CancelledError:  # the actor may grant it still: then it goes back at once
            granted.future().add_done_callback(lambda done: done.exception() or self.state.release.remote())
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.state.release.remote()


class Forward:
    """A worker's progress listener: counts gathered here and sent to the driver twice a second."""

    def __init__(self, state, name: str):
        self.state, self.name = state, name
        self.counts: Counter = Counter()
        self.sent: list = []  # sends not yet known to have arrived
        self.lock = threading.Lock()
        threading.Thread(target=self._forward, daemon=True, name="germinate-progress").start()

    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, amount: int = 1) -> None:
        with self.lock:
            self.counts[stage] += amount

    def finish(self, stage: str) -> None:
        pass

    def forward(self) -> None:
        with self.lock:
            if self.counts:
                self.sent.append(self.state.advance.remote(dict(self.counts)))
                self.counts = Counter()

    def settle(self) -> None:
        """Everything counted so far has reached the run's state."""
        self.forward()
        with self.lock:
            sent, self.sent = self.sent, []
        ray.get(sent)

    def _forward(self) -> None:
        while True:
            time.sleep(FORWARD_EVERY_S)
            self.forward()


def attach(name: str) -> Slots:
    """In a Ray worker: this process's requests take the run's slots and its progress goes to the driver."""
    state = ray.get_actor(name)
    if getattr(progress.listener, "name", None) != name:
        progress.set_listener(Forward(state, name))
    return Slots(state)


def settle() -> None:
    """At the end of a task in a worker: its last counts reach the run's state before the driver hears
    that the task is done."""
    if isinstance(progress.listener, Forward):
        progress.listener.settle()
