import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from germinate.errors import UserError
from germinate.io import load_seeds, read_records, write_records
from germinate.records import SCHEMA

ROWS = [
    {"id": "a", "instruction": "Sort a list in Python.", "category": "coding"},
    {"instruction": "Translate 'hello' to French.", "input": "hello", "output": "bonjour"},
]


def check(seeds):
    assert [s.instruction for s in seeds] == [r["instruction"] for r in ROWS]
    assert seeds[0].id == "a"
    assert seeds[1].id.startswith("seed-")  # no id given: derived from the text, stable across runs
    assert seeds[1].input == "hello" and seeds[1].output == "bonjour"
    assert json.loads(seeds[0].metadata) == {"category": "coding"}  # other columns are kept
    assert all(s.hop == 0 and s.strategy == "seed" for s in seeds)


def test_jsonl(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    check(load_seeds(path))


def test_json(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"seeds": ROWS}))
    check(load_seeds(path))


def test_csv(tmp_path):
    path = tmp_path / "s.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "instruction", "input", "output", "category"])
        writer.writeheader()
        writer.writerows(ROWS)
    check(load_seeds(path))


def test_parquet(tmp_path):
    path = tmp_path / "s.parquet"
    columns = ("id", "instruction", "input", "output", "category")
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in ROWS]), path)
    check(load_seeds(path))


def test_records_round_trip_with_the_one_schema(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    seeds = load_seeds(path)
    write_records(tmp_path / "out.parquet", seeds)
    assert pq.read_schema(tmp_path / "out.parquet").remove_metadata() == SCHEMA
    assert read_records(tmp_path / "out.parquet") == seeds
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", "no seeds in the file"),
        ("blank.jsonl", b"\n  \n", "no seeds in the file"),
        ("broken.jsonl", b'{"instruction": "a"}\n{"instruction": \n', "broken.jsonl:2: invalid JSON"),
        ("noinstr.jsonl", b'{"instruction": "a"}\n{"input": "x"}\n', "noinstr.jsonl:2: seed has no 'instruction'"),
        ("blankinstr.jsonl", b'{"instruction": "  "}\n', "blankinstr.jsonl:1: seed has no 'instruction'"),
        ("latin1.jsonl", b'{"instruction": "a"}\n{"instruction": "caf\xe9"}\n', "latin1.jsonl:2: not UTF-8 (byte 0xe9)"),
        ("list.jsonl", b'["instruction"]\n', "list.jsonl:1: expected an object"),
        ("dup.jsonl", b'{"id": "x", "instruction": "a"}\n{"id": "x", "instruction": "b"}\n', "dup.jsonl:2: seed id 'x' repeats"),
        ("obj.json", b'{"instruction": "a"}', "expected a JSON list"),
        ("bad.json", b'[\n{"instruction": "a"},\n{oops}\n]', "bad.json:3: invalid JSON"),
        ("seeds.txt", b"hello", "unknown seed format '.txt'"),
        ("bad.parquet", b"not parquet", "not a readable Parquet file"),
    ],
)
def test_bad_seed_files_name_the_place(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as error:
        load_seeds(path)
    assert message in str(error.value)


def test_unparsable_csv_names_the_line(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text("instruction\nfine\n" + "x" * 200_000 + "\n")
    with pytest.raises(UserError, match="huge.csv:3: invalid CSV"):
        load_seeds(path)


def test_missing_seed_file(tmp_path):
    with pytest.raises(UserError, match="no such seed file"):
        load_seeds(tmp_path / "nope.jsonl")
