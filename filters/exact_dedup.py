"""Exact dedup, online: a task that is the same as an earlier one after case, whitespace and
punctuation are normalised is dropped. Records come in the run's fixed order, seeds first."""

from __future__ import annotations

from germinate.filters.dedup import duplicate
from germinate.records import Record, normalize, show
from germinate.stage import Context, Outcome, Stage


class ExactDedup(Stage):
    name = "exact_dedup"
    default_place = 30
    section = "quality.exact_dedup"
    ordered = True

    def __init__(self, context: Context):
        super().__init__(context)
        self.first: dict[str, str] = {}  # normalised task -> id of the record kept for it

    async def run(self, records: list[Record]) -> Outcome:
        kept, rejected = [], []
        for record in records:
            key = normalize(show(record))
            if key in self.first:
                rejected.append(duplicate(record, self.name, self.first[key], "same normalised text"))
            else:
                self.first[key] = record.id
                kept.append(record)
        return kept, rejected
