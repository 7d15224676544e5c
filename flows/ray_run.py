"""Shard tasks on Ray act as one run: `llm.concurrency` bounds the requests in flight of the whole
run, not each worker's, and progress reaches the driver's bars and the Prefect UI while the shards
run. A named Ray actor per run hands out the request slots and gathers the progress counts.
Wiring only; imported when `orchestration.task_runner` is ray."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import ray

from germinate import progress
from germinate.config import RunConfig
from germinate.llm import concurrency

FORWARD_EVERY_S = 0.5  # how often a worker sends its progress counts to the driver


@ray.remote(num_cpus=0)
class RunState:
    """Request slots and progress counts of one run. An async actor: its methods share one loop."""

    def __init__(self, slots: int):
        self.slots = asyncio.Semaphore(slots)
        self.counts: Counter = Counter()

    async def acquire(self) -> None:
        await self.slots.acquire()

    async def release(self) -> None:
        self.slots.release()

    async def advance(self, counts: dict[str, int]) -> None:
        self.counts.update(counts)

    async def take(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts


def _name(config: RunConfig) -> str:
    return f"germinate-{config.run_id}"


def start(config: RunConfig):
    """In the driver, before the shards: the run's state, found by name from every worker."""
    slots = concurrency(config.llm)
    return RunState.options(name=_name(config), max_concurrency=4 * slots + 64).remote(slots)


def collect(state) -> None:
    """In the driver, while it waits: what the workers did, into this process's progress."""
    for stage, amount in ray.get(state.take.remote()).items():
        progress.advance(stage, amount)


class Slots:
    """An LLM's request slots, taken from the run's state: a slot per request in flight, run-wide."""

    def __init__(self, state):
        self.state = state

    async def __aenter__(self) -> None:
        await self.state.acquire.remote()

    async def __aexit__(self, *exc: object) -> None:
        self.state.release.remote()


class Forward:
    """A worker's progress listener: counts gathered here and sent to the driver twice a second."""

    def __init__(self, state, run: str):
        self.state, self.run = state, run
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        threading.Thread(target=self._forward, daemon=True, name="germinate-progress").start()

    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, amount: int = 1) -> None:
        with self.lock:
            self.counts[stage] += amount

    def finish(self, stage: str) -> None:
        pass

    def forward(self) -> ray.ObjectRef | None:
        with self.lock:
            counts, self.counts = dict(self.counts), Counter()
        return self.state.advance.remote(counts) if counts else None

    def _forward(self) -> None:
        while True:
            time.sleep(FORWARD_EVERY_S)
            self.forward()


def attach(config: RunConfig) -> Slots | None:
    """In a Ray worker: this process's requests take the run's slots and its progress goes to the
    driver. None in the driver itself."""
    if ray.get_runtime_context().get_task_id() is None:
        return None
    state = ray.get_actor(_name(config))
    if getattr(progress.listener, "run", None) != _name(config):
        progress.set_listener(Forward(state, _name(config)))
    return Slots(state)


def settle() -> None:
    """At the end of a shard task in a worker: its last counts reach the run's state before the
    driver hears that the task is done."""
    if isinstance(progress.listener, Forward) and (sent := progress.listener.forward()) is not None:
        ray.get(sent)
