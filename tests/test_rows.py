"""A run returns the rows it was asked for: `budget.max_records` generated rows, whatever the strategy
and however many seeds; seeds are rows only when the config says so, and then on top; a budget too
small to fill the dataset says so, naming the flag to raise."""

import json

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import TINY_SEEDS, germinate
from servers import WritingServer

STRATEGIES = ["tcia", "glan", "aide", "evol-instruct", "self-instruct"]


@pytest.fixture(scope="module")
def server():
    with WritingServer() as server:
        yield server


def run(server, folder, *flags):
    """`germinate run` against the loopback server; its last line, its warnings and its rows."""
    result = germinate("run", "--backend", "openai", "--base-url", server.base_url, "--run-id", "run", *flags,
                       cwd=folder, timeout=300)
    assert result.returncode == 0, result.stderr
    last = [line for line in result.stdout.splitlines() if " rows (" in line][-1]
    rows = pq.read_table(folder / "data" / "runs" / "run" / "dataset" / "data").to_pylist()
    return last, result.stderr.strip().splitlines(), rows


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_fills_the_dataset_with_generated_rows(server, tmp_path, strategy):
    """The shipped seeds, the default budget, a small dataset: 12 new rows, none of them the user's seeds
    (TCIA and GLAN used to hand back the seeds, chosen first)."""
    last, warnings, rows = run(server, tmp_path, "--strategy", strategy, "--max-records", "12")
    assert last.startswith("12 rows (12 generated) in ") and not warnings
    assert len(rows) == 12 and {r["strategy"] for r in rows} == {strategy}


def test_many_seeds_and_a_small_dataset_give_generated_rows(server, tmp_path):
    """175 seeds, the default 16 rows: 16 generated rows (the seeds used to fill the dataset alone)."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": f"Task {i}: describe a {word} you know."}) + "\n"
                             for i, word in enumerate(["city", "river", "recipe", "habit", "machine"] * 35)))
    last, _, rows = run(server, tmp_path, "--seeds", str(seeds))
    assert last.startswith("16 rows (16 generated) in ")
    assert len(rows) == 16 and all(r["strategy"] != "seed" and r["seed_id"] for r in rows)


def test_seeds_asked_for_come_on_top_of_the_generated_rows(server, tmp_path):
    """`include_seeds: true`: every seed is a row, answered where it had no answer, beside the 6
    generated rows asked for; the card says so."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in TINY_SEEDS))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"seeds": str(seeds), "include_seeds": True,
                                                       "budget": {"max_records": 6}}))
    last, _, rows = run(server, tmp_path, "--config", str(tmp_path / "run.yaml"))
    assert last.startswith("9 rows (6 generated + 3 seeds) in ")
    assert sorted(r["id"] for r in rows if r["strategy"] == "seed") == sorted(s["id"] for s in TINY_SEEDS)
    assert all(r["output"] for r in rows)
    card = (tmp_path / "data" / "runs" / "run" / "dataset" / "README.md").read_text()
    assert "**6 generated** (aide 6), of 6 asked for" in card and "**3 seed tasks**, on top, as given" in card


def test_a_budget_too_small_for_the_dataset_says_which_flag_to_raise(server, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in TINY_SEEDS))
    last, warnings, rows = run(server, tmp_path, "--seeds", str(seeds), "--max-records", "12", "--max-llm-calls", "20")
    assert len(rows) < 12 and last.startswith(f"{len(rows)} rows ({len(rows)} generated of 12 asked) in ")
    spent = last.split("(")[2].split("/")[0]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {len(rows)} generated rows of the 12 asked "
                                                         "(budget.max_records): the strategies grew ")
    assert f"records with {spent} of 20 LLM calls and the gate kept {len(rows)}: " in warnings[0]
    assert warnings[0].endswith(", or --max-llm-calls, or give more seeds")
