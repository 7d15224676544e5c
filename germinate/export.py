"""A run's dataset in the formats trainers read, one JSON object a line: its rows, or the preference
pairs among them (an answer the judge revised and scored higher, and the answer it replaced)."""

from __future__ import annotations

import json
from typing import Any, Callable

import pyarrow as pa

from germinate.records import Record, messages, show


def _alpaca(record: Record) -> dict[str, Any]:
    return {"instruction": record.instruction, "input": record.input or "", "output": record.output or ""}


def _sharegpt(record: Record) -> dict[str, Any]:
    return {"conversations": [{"from": "human", "value": show(record)}, {"from": "gpt", "value": record.output or ""}]}


PREFERENCE_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("prompt", "chosen", "rejected")]
    + [(name, pa.float64()) for name in ("score_chosen", "score_rejected")]
    + [(name, pa.string()) for name in ("critique", "id", "strategy", "seed_id", "model", "prompt_hash")]
)


def preference_pair(record: Record) -> dict[str, Any] | None:
    """TRL's preference columns (prompt, chosen, rejected), the judge's scores of both (as
    UltraFeedback names them) and its critique of the rejected answer, then the row's provenance;
    None for a row with no rejected answer (neither revised nor sampled with a worse one)."""
    if record.draft_output is None:
        return None
    return {"prompt": show(record), "chosen": record.output, "rejected": record.draft_output,
            "score_chosen": record.quality_score, "score_rejected": record.draft_score,
            "critique": record.draft_critique, "id": record.id, "strategy": record.strategy,
            "seed_id": record.seed_id, "model": record.model, "prompt_hash": record.prompt_hash}


def preference_table(records: list[Record]) -> pa.Table:
    """The pairs among `records`, with one schema whatever they hold (a column of nulls is still text)."""
    return pa.Table.from_pylist([pair for record in records if (pair := preference_pair(record))], PREFERENCE_SCHEMA)


FORMATS: dict[str, Callable[[Record], dict[str, Any] | None]] = {
    "messages": lambda record: {"messages": messages(record)},
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "dpo": preference_pair,  # only the rows that make a pair
}


def export_jsonl(records: list[Record], fmt: str) -> tuple[bytes, int]:
    """The lines, and how many."""
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for r in records if (row := FORMATS[fmt](r)) is not None]
    return "".join(lines).encode(), len(lines)
