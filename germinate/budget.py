"""The LLM-call and row budget: split deterministically, spent all or nothing."""

from __future__ import annotations

from dataclasses import dataclass

from germinate.config import RunConfig
from germinate.records import Record
from germinate.runs import EXPAND_STAGE


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


def record_cost(config: RunConfig) -> int:
    """LLM calls a record without an answer needs after expansion: its answer, and the judge's first look.
    Expansion reserves them for every record it keeps, so the later stages never run out."""
    return 1 + config.quality.reflect.enabled


@dataclass
class Allowance:
    """What one unit of expansion (a seed, a discipline) may still spend: LLM calls and dataset rows."""

    calls: int
    records: int

    def take(self, calls: int) -> bool:
        """All or nothing: spend `calls` if that many are left."""
        if calls > self.calls:
            return False
        self.calls -= calls
        return True

    def refund(self, calls: int) -> None:
        self.calls += calls


def admit_seeds(seeds: list[Record], budget: Allowance, cost: int) -> tuple[list[Record], list[Record]]:
    """Seeds are rows of the dataset too, paid for first (a seed that came with its answer needs
    one call less); those past the budget are kept as rejected `over_budget`."""
    kept, rejected = [], []
    for seed in seeds:
        if budget.records >= 1 and budget.take(cost - bool(seed.output)):
            budget.records -= 1
            kept.append(seed)
        else:
            rejected.append(seed.dropped(EXPAND_STAGE, "over_budget"))
    return kept, rejected
