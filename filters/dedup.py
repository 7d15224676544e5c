"""What the dedup stages share: which record of a group of duplicates is kept, and how the
others are dropped. Seeds are kept first, then a higher quality score where records have one,
otherwise the earlier record; every dropped one names the record it duplicates (`duplicate_of`)."""

from __future__ import annotations

import dataclasses

from germinate.records import Record


def rank(record: Record) -> tuple:
    """Sort key of which record of a group to keep (smaller first)."""
    quality = record.quality_score if record.quality_score is not None else float("-inf")
    return (record.strategy != "seed", -quality)


def duplicate(record: Record, stage: str, of: str, detail: str) -> Record:
    """`record` dropped by `stage` as a duplicate of the record with id `of`."""
    return dataclasses.replace(record, duplicate_of=of).dropped(stage, "duplicate", detail)
