"""The generic executor on stages it has never heard of, defined here: records stream through the
stages while the source still grows, ordered stages see them in the shard's fixed order whatever
the timing, and a stage's last look gets what the shard has left."""

import asyncio
import random

import pytest

from germinate.budget import Allowance, Overspent
from germinate.config import RunConfig
from germinate.executor import Seeds, stream_shard
from germinate.llm import Request, check_llm, make_llm
from germinate.llm.base import paid_by, pay
from germinate.records import Record
from germinate.settings import LLMConfig
from germinate.stage import Context, Filter, Stage
from servers import FaultyServer

CONTEXT = Context(RunConfig())


def record(key: str, text: str = "Write a short poem about the sea at night.") -> Record:
    return Record(id=key, instruction=text, strategy="test")


class ShortTasks(Filter):
    name = "short_tasks"

    def check(self, found: Record):
        words = len(found.instruction.split())
        return ("short_task", f"{words} words") if words < 5 else None


class Budgeted(Stage):
    """Keeps everything; its last look drops all but the first record and notes the calls it got."""

    name = "budgeted"

    async def run(self, records):
        return records, []

    async def finish(self, records, calls):
        self.calls = calls
        return records[:1], [r.dropped(self.name, "last_look") for r in records[1:]]


def test_the_executor_runs_a_stage_it_has_never_heard_of():
    seeds = [record("a"), record("b", "Name a river."), record("c"), record("d", "Too short")]
    allowances = [Allowance(2, 1), Allowance(2, 1), Allowance(2, 1), Allowance(0, 0)]  # d is over the budget
    budgeted = Budgeted(CONTEXT)
    output = asyncio.run(stream_shard(Seeds(), seeds, allowances, [ShortTasks(CONTEXT), budgeted]))
    made, short, last = output.stats
    assert (made.records_in, made.kept, dict(made.dropped)) == (4, 3, {"over_budget": 1})
    assert (short.records_in, short.kept, dict(short.dropped)) == (3, 2, {"short_task": 1})
    assert (last.records_in, last.kept, dict(last.dropped)) == (2, 1, {"last_look": 1})
    assert [r.id for r in output.kept] == ["a"] and [r.id for r in output.made] == ["a", "b", "c"]
    (dropped,) = output.rejected["short_tasks"]
    assert (dropped.id, dropped.drop_stage, dropped.drop_reason, dropped.drop_detail) == (
        "b", "short_tasks", "short_task", "3 words")
    assert [r.id for r in output.rejected["expand"]] == ["d"]
    assert budgeted.calls == 6  # every call the shard planned, none spent


class OneThenAnother:
    """A source whose unit hands on one record, then waits until a stage has seen it before it
    makes the next: an executor that waits for the whole expansion first never gets there."""

    def __init__(self, seen: asyncio.Event):
        self.seen = seen

    async def prepare(self, units, allowances):
        pass

    async def grow(self, unit, allowance, emit):
        emit([record(f"{unit}-first")], [])
        await asyncio.wait_for(self.seen.wait(), timeout=5)
        emit([record(f"{unit}-second")], [])


class Sees(Stage):
    name = "sees"

    def __init__(self, context, seen):
        super().__init__(context)
        self.seen = seen

    async def run(self, records):
        self.seen.set()
        return records, []


def test_records_go_through_the_stages_while_the_source_still_grows():
    async def shard():
        seen = asyncio.Event()
        return await stream_shard(OneThenAnother(seen), ["u"], [Allowance(0, 2)], [Sees(CONTEXT, seen)])

    assert [r.id for r in asyncio.run(shard()).kept] == ["u-first", "u-second"]


class Scrambled:
    """Units hand on records after random pauses: the order records arrive in is up to chance."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    async def prepare(self, units, allowances):
        pass

    async def grow(self, unit, allowance, emit):
        for i in range(3):
            await asyncio.sleep(self.rng.random() / 100)
            emit([record(f"{unit}-{i}")], [])


class Slow(Stage):
    """Per record, takes a random while: records overtake each other here."""

    name = "slow"

    def __init__(self, context, rng):
        super().__init__(context)
        self.rng = rng

    async def run(self, records):
        await asyncio.sleep(self.rng.random() / 50)
        return records, []


class Arrivals(Stage):
    name = "arrivals"
    ordered = True

    def __init__(self, context):
        super().__init__(context)
        self.order = []

    async def run(self, records):
        self.order += [r.id for r in records]
        kept = [r for r in records if not r.id.endswith("-1")]  # drops some: the turns still pass on
        return kept, [r.dropped(self.name, "second") for r in records if r.id.endswith("-1")]


def test_an_ordered_stage_takes_records_in_the_shards_order_whatever_the_timing():
    units = ["u0", "u1", "u2", "u3"]
    expected = ["seed", *(f"{u}-{i}" for u in units for i in range(3))]
    for chance in (1, 2, 3):
        rng = random.Random(chance)
        arrivals, after = Arrivals(CONTEXT), Arrivals(CONTEXT)
        stages = [Slow(CONTEXT, rng), arrivals, Slow(CONTEXT, rng), after]
        allowances = [Allowance(0, 3) for _ in units]
        output = asyncio.run(stream_shard(Scrambled(rng), units, allowances, stages, prime=[record("seed")]))
        assert arrivals.order == expected  # the prime first, then unit after unit, each in its own order
        assert after.order == ["seed", *(key for key in expected[1:] if not key.endswith("-1"))]
        assert [r.id for r in output.kept] == [key for key in expected[1:] if not key.endswith("-1")]
        assert output.stats[2].records_in == 12  # the prime is not counted


class Asks:
    """A source whose unit sends `asks` requests, then keeps `keeps` records: whatever its allowance."""

    def __init__(self, llm, asks: int, keeps: int):
        self.llm, self.asks, self.keeps = llm, asks, keeps

    async def prepare(self, units, allowances):
        pass

    async def grow(self, unit, allowance, emit):
        prompts = [[{"role": "user", "content": f"Name a river, {unit} {i}."}] for i in range(self.asks)]
        await self.llm.generate([Request(prompt, max_tokens=8) for prompt in prompts])
        emit([record(f"{unit}-{i}") for i in range(self.keeps)], [])


class Answers(Stage):
    """Stands for the answering stage: one LLM call for each record without an answer."""

    name = "answers"

    @classmethod
    def calls_for(cls, config, answered):
        return 0 if answered else 1

    async def run(self, records):
        return records, []


def test_a_step_pays_from_what_it_set_aside_and_gives_back_what_it_did_not_use():
    """What a strategy relies on when its step's records pay later while other requests go out: the
    calls it sets aside are spent first, a rewrite extends them only from what is left, what the
    step did not use (a record dropped inside) comes back when it ends, and the allowance as
    planned still holds."""
    allowance = Allowance(10, 3, owner="unit 0")
    with paid_by(allowance):
        with allowance.reserve(6) as reserved:
            assert allowance.calls == 4
            pay(2)  # the step's requests
            assert allowance.calls == 4
            assert reserved.extend(3) and allowance.calls == 1
            assert not reserved.extend(2)
            pay(1)
        assert allowance.calls == 7  # 9 set aside, 3 spent
        with allowance.reserve(8) as too_much:
            assert too_much is None and allowance.calls == 7
        pay(7)
        with pytest.raises(Overspent, match="unit 0 spent more than its allowance of 10 LLM calls"):
            pay(1)


def test_a_source_cannot_spend_past_its_allowance():
    """The executor pays each request a unit sends, and each record it keeps with the calls the stages
    will make for it, from the unit's allowance as planned, whatever the source counts itself: what
    would go past it is refused before it is sent, naming the unit."""
    with FaultyServer() as server:
        llm = make_llm(check_llm(LLMConfig(backend="openai", base_url=server.base_url)), None)
        try:
            def shard(asks, keeps):
                source = Asks(llm, asks, keeps)
                return llm.run(stream_shard(source, ["u"], [Allowance(4, 2)], [Answers(CONTEXT)]))

            assert len(shard(asks=2, keeps=2).kept) == 2  # 2 requests + 2 answers to come: the allowance
            with pytest.raises(Overspent, match="unit 0 spent more than its allowance of 4 LLM calls"):
                shard(asks=5, keeps=0)  # the fifth request
            with pytest.raises(Overspent):
                shard(asks=3, keeps=2)  # the second answer would be the fifth call
            with pytest.raises(Overspent):
                shard(asks=0, keeps=3)  # a third row
        finally:
            llm.close()
