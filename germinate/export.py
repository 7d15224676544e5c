"""A run's dataset in the formats trainers read, one JSON object a line."""

from __future__ import annotations

import json
from typing import Any, Callable

from germinate.records import Record, messages, show


def _alpaca(record: Record) -> dict[str, Any]:
    return {"instruction": record.instruction, "input": record.input or "", "output": record.output or ""}


def _sharegpt(record: Record) -> dict[str, Any]:
    return {"conversations": [{"from": "human", "value": show(record)}, {"from": "gpt", "value": record.output or ""}]}


FORMATS: dict[str, Callable[[Record], dict[str, Any]]] = {
    "messages": lambda record: {"messages": messages(record)},
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
}


def export_jsonl(records: list[Record], fmt: str) -> bytes:
    convert = FORMATS[fmt]
    return "".join(json.dumps(convert(r), ensure_ascii=False) + "\n" for r in records).encode()
