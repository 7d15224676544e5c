"""The LLM-call and row budget: split evenly and deterministically, spent all or nothing."""

from __future__ import annotations

from dataclasses import dataclass


def allocate(total: int, parts: int) -> list[int]:
    """Split an integer budget as evenly as possible, deterministically."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


@dataclass
class Allowance:
    """What one seed (or shard) may still spend: LLM calls and dataset rows."""

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
