"""Reading seed files and writing Parquet atomically."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from germinate.errors import UserError
from germinate.records import Record, from_table, record_id, to_table

SEED_FIELDS = ("id", "instruction", "input", "output")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_table(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_atomic(path, sink.getvalue().to_pybytes())


def write_records(path: Path, records: list[Record]) -> None:
    write_table(path, to_table(records))


def read_records(path: Path) -> list[Record]:
    # ParquetFile, not read_table: read_table goes through pyarrow.dataset, whose import (pandas with
    # it) took 0.2 s of a run's end.
    with pq.ParquetFile(path) as parquet:
        return from_table(parquet.read())


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x})") from None


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def _json_rows(path: Path, text: str, kind: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict) and isinstance(data.get(f"{kind}s"), list):
        data = data[f"{kind}s"]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of {kind} objects (or {{\"{kind}s\": [...]}})")
    for index, row in enumerate(data):
        yield f"{path}: item {index}", row


def _csv_rows(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        for row in reader:
            if None in row:
                raise UserError(f"{path}:{reader.line_num}: more fields than the header has")
            yield f"{path}:{reader.line_num}", {k: v for k, v in row.items() if v not in (None, "")}
    except csv.Error as exc:
        # line_num counts the lines read before the one that failed
        raise UserError(f"{path}:{reader.line_num + 1}: invalid CSV ({exc})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    for index, row in enumerate(rows):
        yield f"{path}: row {index}", row


def _optional_text(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value)


def _seed(place: str, row: Any) -> Record:
    if not isinstance(row, dict):
        raise UserError(f"{place}: expected an object with an 'instruction', got {type(row).__name__}")
    instruction = row.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise UserError(f"{place}: seed has no 'instruction' (a non-empty string)")
    for key in ("input", "output", "id"):
        if row.get(key) is not None and not isinstance(row[key], (str, int)):
            raise UserError(f"{place}: '{key}' must be a string")
    extra = {k: v for k, v in row.items() if k not in SEED_FIELDS and v is not None}
    instruction = instruction.strip()
    return Record(
        id=str(row.get("id") or f"seed-{record_id(instruction, row.get('input'))[:10]}"),
        instruction=instruction,
        input=_optional_text(row.get("input")),
        output=_optional_text(row.get("output")),
        strategy="seed",
        hop=0,
        metadata=json.dumps(extra, default=str, ensure_ascii=False) if extra else None,
    )


TABLE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


def table_rows(path: Path, kind: str) -> Iterator[tuple[str, Any]]:
    """(where, row) of a `kind` file (seed, benchmark) in JSONL, JSON, CSV or Parquet. Every error names
    the file and line (or row)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{path}: is a directory; name a {kind} file (.jsonl, .json, .csv or .parquet) in it")
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path}: a loop of symbolic links, not a {kind} file") from None
        if exc.errno == errno.ENOENT:
            raise UserError(f"{path}: no such {kind} file") from None
        raise UserError(f"{path}: cannot read the {kind} file ({exc.strerror})") from None
    if not path.is_file():
        raise UserError(f"{path}: not a regular file; name a {kind} file")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UserError(f"{path}: unknown {kind} format '{suffix}' (use .jsonl, .json, .csv or .parquet)")
    if suffix == ".parquet":
        return _parquet_rows(path)
    text = _decode(path, path.read_bytes())
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_rows(path, text)
    if suffix == ".json":
        return _json_rows(path, text, kind)
    return _csv_rows(path, text)


def load_seeds(path: Path) -> list[Record]:
    """Seeds from JSONL, JSON, CSV or Parquet. Every error names the file and line (or row)."""
    seeds: list[Record] = []
    seen: dict[str, str] = {}
    for place, row in table_rows(path, "seed"):
        seed = _seed(place, row)
        if seed.id in seen:
            raise UserError(f"{place}: seed id '{seed.id}' repeats {seen[seed.id]}")
        seen[seed.id] = place
        seeds.append(seed)
    if not seeds:
        raise UserError(f"{path}: no seeds in the file")
    return seeds
