"""The generic executor: it runs stages over records and knows none of them by name.

A run is cut into shards (germinate/budget.py plans them, once). Inside a shard the records
stream: the source (a strategy) grows them unit by unit, and each record goes on through the
per-record stages as soon as it is made, so answering and judging overlap with expansion and
the server always has work. An ordered stage (online dedup) takes the shard's records one at a
time in a fixed order, unit after unit and in each unit's own order, so what it keeps does not
depend on which answer came back first. At the end of a shard, stages with a last look (the
judge's revisions) get it with the calls the shard has left. Whole-set stages run once, on
the records every shard let through.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from germinate.budget import EXPAND_STAGE, Allowance, Overspent
from germinate.llm.base import counted, paid_by, pay
from germinate.records import Record
from germinate.stage import Outcome, Stage
from germinate.stats import StageStats, Usage

Emit = Callable[[list[Record], list[Record]], None]


class Source(Protocol):
    """What makes a shard's records: a strategy, or the seeds."""

    async def prepare(self, units: Sequence[Any], allowances: list[Allowance]) -> None:
        """Work across the shard's units before they grow (TCIA's constraint pool)."""

    async def grow(self, unit: Any, allowance: Allowance, emit: Emit) -> None:
        """Grow records from one unit within its allowance, handing each batch on, (kept, rejected),
        as soon as it is final."""


class Seeds:
    """The first shard's source: each seed is a unit that makes itself, unless the budget has no
    room for it (then it is kept as rejected `over_budget`)."""

    async def prepare(self, units: Sequence[Any], allowances: list[Allowance]) -> None:
        pass

    async def grow(self, seed: Record, allowance: Allowance, emit: Emit) -> None:
        if allowance.records:
            emit([seed], [])
        else:
            emit([], [seed.dropped(EXPAND_STAGE, "over_budget")])


@dataclass
class ShardOutput:
    made: list[Record]  # what the source kept, before any later stage
    kept: list[Record]  # what came through every per-record stage, in the shard's order
    rejected: dict[str, list[Record]]  # by stage, in the order they were dropped
    stats: list[StageStats]  # the source's, then each stage's


@dataclass
class _Step:
    """One stage's bookkeeping in a shard: what it saw, kept and dropped, its calls, its busy time."""

    stage: Stage
    stats: StageStats
    usage: Usage
    on_record: Callable[[str, int], None] = lambda stage, count: None  # it is done with `count` records
    rejected: list[Record] = field(default_factory=list)
    active: int = 0
    since: float = 0.0

    def start(self) -> None:
        if not self.active:
            self.since = time.perf_counter()
        self.active += 1

    def stop(self) -> None:
        self.active -= 1
        if not self.active:
            self.stats.seconds += time.perf_counter() - self.since

    async def run(self, records: list[Record], finish: int | None = None) -> Outcome:
        self.start()
        try:
            with counted(self.usage):
                if finish is None:
                    kept, rejected = await self.stage.run(records)
                else:
                    kept, rejected = await self.stage.finish(records, finish)
        finally:
            self.stop()
        if finish is None:
            self.stats.records_in += len(records)
            self.stats.kept += len(kept)
        else:
            self.stats.kept -= len(rejected)
        for record in rejected:
            self.stats.dropped[record.drop_reason] += 1
        self.rejected += rejected
        if finish is None:
            self.on_record(self.stage.name, len(records))
        return kept, rejected


class _Turns:
    """An ordered stage's queue: it takes the shard's records in their fixed order, one at a time.
    A record's turn comes when every record before it has arrived here or was dropped before."""

    def __init__(self, step: _Step, units: int):
        self.step = step
        self.made = [0] * units  # records each unit has made so far
        self.closed = [False] * units  # the unit will make no more
        self.arrivals: dict[tuple[int, int], asyncio.Future] = {}
        self.results: dict[tuple[int, int], asyncio.Future] = {}
        self.changed = asyncio.Event()

    def expect(self, position: tuple[int, int]) -> None:
        loop = asyncio.get_running_loop()
        self.arrivals[position], self.results[position] = loop.create_future(), loop.create_future()
        self.made[position[0]] += 1
        self.changed.set()

    def close(self, unit: int) -> None:
        self.closed[unit] = True
        self.changed.set()

    async def enter(self, position: tuple[int, int], record: Record) -> Record | None:
        """Wait for the record's turn; the record as the stage kept it, or None."""
        self.arrivals[position].set_result(record)
        return await self.results[position]

    def skip(self, position: tuple[int, int]) -> None:
        """The record was dropped before this stage: its turn passes."""
        self.arrivals[position].set_result(None)
        del self.results[position]

    async def serve(self) -> None:
        for unit in range(len(self.made)):
            made = 0
            while True:
                while made == self.made[unit] and not self.closed[unit]:
                    self.changed.clear()
                    await self.changed.wait()
                if made == self.made[unit]:
                    break
                position = (unit, made)
                record = await self.arrivals[position]
                del self.arrivals[position]
                if record is not None:
                    kept, _ = await self.step.run([record])
                    self.results.pop(position).set_result(kept[0] if kept else None)
                    # A stage that never waits would take a whole backlog in one go, and no request
                    # would be sent or answered meanwhile: let the loop turn between records.
                    await asyncio.sleep(0)
                made += 1


async def stream_shard(
    source: Source, units: Sequence[Any], allowances: list[Allowance], stages: list[Stage], *,
    name: str = EXPAND_STAGE, prime: Sequence[Record] = (), on_call: Callable[[str], None] = lambda stage: None,
    on_record: Callable[[str, int], None] = lambda stage, count: None,
    on_made: Callable[[list[Record]], None] = lambda records: None,
) -> ShardOutput:
    """Grow the shard's records and take each through `stages` (per-record ones) as it is made.
    `name` is the source's stage; ordered stages see `prime` first (the seeds: kept first in every
    shard), uncounted. For progress: `on_call(stage)` hears each LLM request, `on_record(stage, n)`
    each stage done with n more records. `on_made` gets every record the source hands on, kept or
    not (embedded in the background for what comes later)."""
    made_stats = StageStats(name, records_in=len(units))
    made_usage = Usage(on_call=lambda: on_call(name))
    steps = [_Step(stage, StageStats(stage.name), Usage(on_call=lambda stage=stage.name: on_call(stage)), on_record)
             for stage in stages]
    turns = {id(step): _Turns(step, len(units)) for step in steps if step.stage.ordered}
    made: dict[tuple[int, int], Record] = {}
    made_rejected: list[Record] = []
    survivors: dict[tuple[int, int], Record] = {}
    walks: set[asyncio.Task] = set()
    counts = [0] * len(units)  # records each unit has made
    closed = [False] * len(units)
    planned = sum(a.calls for a in allowances)
    # The budget as planned, kept here whatever the source counts: what a unit sends, and each record
    # it keeps (with the calls the stages will make for it), is paid from its allowance.
    owner = getattr(source, "name", name)
    for i, (unit, allowance) in enumerate(zip(units, allowances)):
        allowance.owner = f"{owner} on {_unit_name(unit, i)}"
    broken = asyncio.get_running_loop().create_future()  # the first failure of a record's walk or a queue

    def watch(task: asyncio.Task) -> None:
        walks.discard(task)
        if not task.cancelled() and task.exception() is not None and not broken.done():
            broken.set_exception(task.exception())

    async def walk(position: tuple[int, int], record: Record) -> None:
        with paid_by(None):  # the stages' requests were paid when the record was kept
            for i, step in enumerate(steps):
                if id(step) in turns:
                    survivor = await turns[id(step)].enter(position, record)
                else:
                    kept, _ = await step.run([record])
                    survivor = kept[0] if kept else None
                if survivor is None:
                    for later in steps[i + 1:]:
                        if id(later) in turns:
                            turns[id(later)].skip(position)
                    return
                record = survivor
            survivors[position] = record

    def emitter(unit: int) -> Emit:
        def emit(kept: list[Record], rejected: list[Record]) -> None:
            if closed[unit]:
                raise RuntimeError(f"{type(source).__name__} handed on records after its unit {unit} ended")
            if len(kept) > allowances[unit].records:
                raise Overspent(f"{allowances[unit].owner} kept {len(kept)} rows, past the "
                                f"{allowances[unit].records} left of its allowance")
            # From the unit's allowance, or the calls its strategy set aside for the step that kept them.
            pay(sum(stage.calls_for(stage.config, bool(record.output)) for stage in stages for record in kept))
            on_made(kept + rejected)
            on_record(name, len(kept))
            made_rejected.extend(rejected)
            for record in kept:
                allowances[unit].records -= 1  # counted here: a strategy reads what is left, never counts it
                position = (unit, counts[unit])
                counts[unit] += 1
                made[position] = record
                for queue in turns.values():
                    queue.expect(position)
                task = asyncio.create_task(walk(position, record))
                walks.add(task)
                task.add_done_callback(watch)

        return emit

    async def grow(unit: int) -> None:
        try:
            with paid_by(allowances[unit]):
                await source.grow(units[unit], allowances[unit], emitter(unit))
        finally:
            closed[unit] = True
            for queue in turns.values():
                queue.close(unit)

    for step in steps:
        if step.stage.ordered and prime:
            await step.stage.run(list(prime))
    servers = [asyncio.create_task(queue.serve()) for queue in turns.values()]
    for server in servers:
        server.add_done_callback(watch)
    start = time.perf_counter()

    async def everything() -> None:
        with counted(made_usage):
            with paid_by(Unpaid(owner)):
                await source.prepare(units, allowances)
            await asyncio.gather(*(grow(unit) for unit in range(len(units))))
        made_stats.seconds = time.perf_counter() - start
        await asyncio.gather(*servers)
        while walks:
            await asyncio.gather(*list(walks))

    main = asyncio.ensure_future(everything())
    try:  # a failure anywhere (the server gone, a stage that raised) stops the shard at once
        await asyncio.wait([main, broken], return_when=asyncio.FIRST_COMPLETED)
        if broken.done():
            broken.result()
        main.result()
    except BaseException:
        pending = [main, *servers, *walks]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if broken.done():
            broken.exception()  # seen: the one raised is enough
        raise

    kept = [survivors[p] for p in sorted(survivors)]
    for step in steps:  # last looks, in stage order, on what each kept
        if step.stage.has_last_look():
            left = planned - made_usage.calls - sum(s.usage.calls for s in steps)
            kept, _ = await step.run(kept, finish=max(0, left))

    made_stats.kept = len(made)
    made_stats.dropped.update(r.drop_reason for r in made_rejected)
    usages = [made_usage, *(step.usage for step in steps)]
    stats = [made_stats, *(step.stats for step in steps)]
    for stat, usage in zip(stats, usages):
        stat.add_usage(usage)
    return ShardOutput(
        made=[made[p] for p in sorted(made)],
        kept=kept,
        rejected={name: made_rejected, **{step.stage.name: step.rejected for step in steps}},
        stats=stats,
    )


@dataclass
class Unpaid:
    """What pays for a request that no unit's allowance pays for: nothing."""

    owner: str

    def pay(self, calls: int) -> None:
        raise Overspent(f"{self.owner} asked the model in `prepare` outside its units' allowances "
                        "(bind a request to its unit's with germinate.llm.base.paid_by)")


def _unit_name(unit: Any, index: int) -> str:
    """A unit as a user knows it: its seed's id, its discipline's name, or its place in the shard."""
    return str(getattr(unit, "id", None) or getattr(unit, "name", None) or f"unit {index}")


async def run_whole_set(stage: Stage, records: list[Record]) -> tuple[Outcome, StageStats]:
    """A stage that needs every record at once: once, on all of them."""
    step = _Step(stage, StageStats(stage.name), Usage())
    outcome = await step.run(records)
    step.stats.add_usage(step.usage)
    return outcome, step.stats
