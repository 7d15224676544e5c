"""The LLM-call and row budget: planned once per run, split deterministically into shards, spent
all or nothing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

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


@dataclass
class Allowance:
    """What one unit of expansion (a seed, a discipline) may still spend: LLM calls and dataset rows."""

    calls: int  # a strategy takes them before it asks, and gives back what it did not use
    records: int  # counted down by the executor as the unit's records are kept

    def take(self, calls: int) -> bool:
        """All or nothing: spend `calls` if that many are left."""
        if calls > self.calls:
            return False
        self.calls -= calls
        return True

    def refund(self, calls: int) -> None:
        self.calls += calls


class Overspent(RuntimeError):
    """A strategy spent past an allowance: a fault of the strategy, which stops the run before its
    budget is passed."""


@dataclass
class Meter:
    """The LLM calls a unit (or a shard) really spends, counted as it goes whatever its strategy
    counts: each request sent, and for each record kept, the calls the later stages will make for it.
    It refuses what would pass the allowance as planned, and so does its `shard`'s."""

    calls: int
    owner: str  # who spends: named when it spends too much
    shard: Meter | None = None
    spent: int = 0

    def pay(self, calls: int) -> None:
        if self.spent + calls > self.calls:
            raise Overspent(f"{self.owner} spent more than its allowance of {self.calls} LLM calls "
                            f"(it had spent {self.spent})")
        if self.shard:
            self.shard.pay(calls)
        self.spent += calls


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


def seed_allowances(seeds: list[Record], budget: Allowance, cost: Callable[[bool], int]) -> list[Allowance]:
    """Seeds that are rows come on top of the generated rows; their calls (`cost(answered)`: a seed may
    come with its answer) are paid first. A seed past the call budget gets nothing, and is kept as
    rejected `over_budget`."""
    return [Allowance(cost(bool(seed.output)), 1) if budget.take(cost(bool(seed.output))) else Allowance(0, 0)
            for seed in seeds]


def plan(config: RunConfig, seeds: list[Record], strategies: dict[str, Planner], cost: Callable[[bool], int]) -> Plan:
    """The seeds that are rows first (shard 0); the calls left and the generated rows are split by the
    strategies' shares, then over each strategy's units (seeds, disciplines), so a unit's share does
    not depend on the sharding. `cost(answered)`: the LLM calls the later stages make for a record."""
    # A stage that chooses among records (selection) has expansion grow a pool larger than the dataset.
    budget = Allowance(config.budget.max_llm_calls, math.ceil(config.budget.max_records * config.grown_per_row))
    shown = seeds if config.include_seeds else []
    shards = [ShardWork(0, SEEDS, shown, seed_allowances(shown, budget, cost))]
    calls, rows = apportion(budget.calls, config.shares), apportion(budget.records, config.shares)
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
