"""The LLM-call and row budget: planned once per run, split deterministically into shards, spent
all or nothing."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from germinate.llm.base import paid_by
from germinate.records import Record

if TYPE_CHECKING:
    from germinate.config import RunConfig

EXPAND_STAGE = "expand"  # the first stage of every run, whatever the strategy
SEEDS = "seeds"  # the source of the first shard: the seeds themselves


def allocate(total: int, parts: int) -> list[int]:
    """Split an integer budget as evenly as possible, deterministically."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def apportion(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Split an integer budget by shares (summing to 1): largest remainders, ties in order."""
    exact = {name: total * share for name, share in shares.items()}
    parts = {name: int(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: parts[name] - exact[name])
    for name in by_remainder[: total - sum(parts.values())]:
        parts[name] += 1
    return parts


class Overspent(RuntimeError):
    """A strategy spent past an allowance: a fault of the strategy, which stops the run before its
    budget is passed."""


@dataclass
class Allowance:
    """What one unit of expansion (a seed, a discipline) may still spend: LLM calls and dataset rows.

    The executor keeps it, whatever the strategy does: each request sent while the unit grows pays a
    call, and each record kept pays the calls the later stages will make for it; what would pass it
    is refused (`Overspent`), naming the unit. A strategy only reads what is left to plan its next
    step, and sets calls aside (`reserve`) for a step whose records pay later while others may
    spend meanwhile."""

    calls: int  # neither spent nor set aside
    records: int  # counted down by the executor as the unit's records are kept
    owner: str = "a unit"  # who spends: named when it spends too much
    planned: int = field(init=False)  # the calls it started with, for that message

    def __post_init__(self) -> None:
        self.planned = self.calls

    def pay(self, calls: int) -> None:
        if calls > self.calls:
            raise Overspent(f"{self.owner} spent more than its allowance of {self.planned} LLM calls")
        self.calls -= calls

    @contextlib.contextmanager
    def reserve(self, calls: int) -> Iterator[Reservation | None]:
        """`calls` set aside for what is done inside (None if fewer are left): its requests, and the
        records it keeps, are paid from them first, and what they did not use comes back at the end.
        A record dropped inside so gives back, once the step is over, what it did not spend."""
        if calls > self.calls:
            yield None
            return
        reservation = Reservation(self, calls)
        self.calls -= calls
        try:
            with paid_by(reservation):
                yield reservation
        finally:
            self.calls += reservation.left


@dataclass
class Reservation:
    """Calls of an allowance set aside for one step (`Allowance.reserve`)."""

    allowance: Allowance
    left: int

    def pay(self, calls: int) -> None:
        here = min(calls, self.left)
        self.left -= here
        if calls > here:  # past what was set aside: from what the unit has left, if it has
            self.allowance.pay(calls - here)

    def extend(self, calls: int) -> bool:
        """All or nothing: `calls` more set aside, if the unit has that many left (a rewrite that a
        judgement asks for)."""
        if calls > self.allowance.calls:
            return False
        self.allowance.calls -= calls
        self.left += calls
        return True


class Planner(Protocol):
    """What the plan asks of a strategy (generators.Strategy)."""

    def units(self, seeds: list[Record], calls: int, rows: int) -> Sequence[Any]: ...


@dataclass
class ShardWork:
    """One shard task's whole description: where its records come from, the units they grow from,
    and what each unit may spend. Planned once; a shard task never recomputes it."""

    index: int
    source: str  # a strategy's name, or SEEDS
    units: list[Any]
    allowances: list[Allowance]
    prime: list[Record] = field(default_factory=list)  # what ordered stages see first: the seeds (copies are no rows)


@dataclass
class Plan:
    shards: list[ShardWork]
    # each strategy's share of the budget: {name: {share, max_llm_calls, max_records}}
    strategies: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def records(self) -> int:
        """Records planned in all (seeds included): the rows every unit may keep."""
        return sum(allowance.records for shard in self.shards for allowance in shard.allowances)


def seed_allowances(seeds: list[Record], calls: int, cost: Callable[[bool], int]) -> list[Allowance]:
    """Seeds that are rows come on top of the generated rows; their calls (`cost(answered)`: a seed may
    come with its answer) are paid first, from `calls`. A seed past them gets nothing, and is kept as
    rejected `over_budget`."""
    allowances = []
    for seed in seeds:
        needed = cost(bool(seed.output))
        allowances.append(Allowance(needed, 1) if needed <= calls else Allowance(0, 0))
        calls -= allowances[-1].calls
    return allowances


def plan(config: RunConfig, seeds: list[Record], strategies: dict[str, Planner], cost: Callable[[bool], int]) -> Plan:
    """The seeds that are rows first (shard 0); the calls left and the generated rows are split by the
    strategies' shares, then over each strategy's units (seeds, disciplines), so a unit's share does
    not depend on the sharding. `cost(answered)`: the LLM calls the later stages make for a record."""
    # A stage that chooses among records (selection) has expansion grow a pool larger than the dataset.
    records = math.ceil(config.budget.max_records * config.grown_per_row)
    shown = seeds if config.include_seeds else []
    shards = [ShardWork(0, SEEDS, shown, seed_allowances(shown, config.budget.max_llm_calls, cost))]
    left = config.budget.max_llm_calls - sum(a.calls for a in shards[0].allowances)
    calls, rows = apportion(left, config.shares), apportion(records, config.shares)
    summary = {}
    for name, strategy in strategies.items():
        summary[name] = {"share": round(config.shares[name], 4), "max_llm_calls": calls[name],
                         "max_records": rows[name]}
        units = list(strategy.units(seeds, calls[name], rows[name]))
        if not units:  # its share cannot grow a record from anything
            continue
        allowances = [Allowance(c, r) for c, r in zip(allocate(calls[name], len(units)),
                                                     allocate(rows[name], len(units)))]
        for start in range(0, len(units), config.shard_size):
            stop = start + config.shard_size
            shards.append(ShardWork(len(shards), name, units[start:stop], allowances[start:stop], seeds))
    return Plan(shards, summary)
