"""End to end: seeds -> AIDE expand -> respond -> quality gate -> dataset, as `germinate run` makes
it (in this process), and under the Prefect flow."""

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from conftest import GATE_OFF, TINY_SEEDS, tiny_config
from germinate.driver import run_here
from germinate.errors import UserError
from germinate.flows.build import build_dataset
from germinate.records import DATASET_SCHEMA
from germinate.report import describe_metrics
from germinate.runs import Run
from germinate.config import DEFAULT_STAGES, known_stages
from servers import FaultyServer


def write_seeds(folder: Path) -> Path:
    path = folder / "seeds.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in TINY_SEEDS))
    return path


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    """One real run on the embedded SmolLM2 model with the whole quality gate, shared by the
    assertions below: a row budget of 6 and 60 calls. How many rows the gate leaves of a 135M
    model's children (a third to a half of them) depends on the sampled text."""
    folder = tmp_path_factory.mktemp("embedded")
    config = tiny_config(write_seeds(folder), folder / "runs", aide__on_reflection_fail="keep", budget__max_records=6,
                         budget__max_llm_calls=60,
                         generation__response_max_tokens=160)  # room to finish: cut-off answers are dropped
    report = run_here(config)
    return config, report, Run(Path(report.dataset).parent)


def test_dataset_loads_with_datasets_and_has_the_schema(embedded_run):
    config, report, run = embedded_run
    dataset = load_dataset("parquet", data_dir=str(run.dataset_dir / "data"), split="train")
    assert dataset.column_names == DATASET_SCHEMA.names
    assert len(dataset) == report.rows > 0
    assert all(row["output"] for row in dataset)  # every instruction was answered
    card = (run.dataset_dir / "README.md").read_text()
    assert card.startswith("---\n") and "data/train-*" in card
    # The folder loads by its card too, as it will from the Hub.
    assert load_dataset(str(run.dataset_dir), split="train").num_rows == report.rows


def test_provenance_is_consistent(embedded_run):
    """Over everything the expansion made: each record's parent, seed, hop and operation fit; the
    dataset's rows are among them, and no seed is a row (they are not by default)."""
    config, report, run = embedded_run
    made = {r.id: dataclasses.asdict(r) for r in run.kept("expand")}
    dataset = {r["id"] for r in pq.read_table(run.dataset_dir / "data").to_pylist()}
    seeds = {r.id: dataclasses.asdict(r) for r in run.seeds()}
    assert set(seeds) == {s["id"] for s in TINY_SEEDS} and dataset <= set(made) and not dataset & set(seeds)
    rows = {**seeds, **made}
    hops = set()
    for row in rows.values():
        if row["strategy"] == "seed":
            assert row["id"] in seeds and row["hop"] == 0 and row["parent_id"] is None
            continue
        parent = rows[row["parent_id"]]  # every parent was made first
        assert row["hop"] == parent["hop"] + 1
        assert row["seed_id"] == (parent["id"] if parent["hop"] == 0 else parent["seed_id"])
        assert row["strategy"] == "aide" and row["topic"] and row["prompt_hash"] and row["model"]
        assert row["operation"] in ("concretizing", "persona")
        assert (row["persona"] is not None) == (row["operation"] == "persona")
        assert (row["attribute"] is not None) == (row["operation"] != "persona")
        assert 1 <= row["reflection_score"] <= 10 and row["reflection_critique"] is not None
        if row["operation"] == "persona":
            assert 1 <= row["difference_score"] <= 10
        hops.add(row["hop"])
    assert hops == {1, 2}  # the tree grew to the configured depth


def test_budget_is_respected(embedded_run):
    config, report, run = embedded_run
    assert report.llm_calls <= config.budget.max_llm_calls
    assert report.rows <= config.budget.max_records
    stages = {s.stage: s for s in report.stages}
    respond = stages["respond"]
    assert respond.llm_calls == respond.records_in  # every generated record answered (the seeds are not rows)
    assert stages["expand"].prompt_tokens > 0 and respond.completion_tokens > 0
    assert stages["judge"].llm_calls >= stages["judge"].records_in  # every answer judged


def test_whole_gate_runs_and_no_record_disappears(embedded_run):
    """kept + rejected = generated at every stage, each rejected record has its stage and
    reason on disk, and the dataset is what the last stage kept."""
    config, report, run = embedded_run
    stages = report.stages
    switched_on = [name for name in DEFAULT_STAGES if config.switched_on(known_stages()[name])]
    assert [s.stage for s in stages] == ["expand", *switched_on] and "decontaminate" not in switched_on  # no benchmark
    for before, after in zip(stages, stages[1:]):
        assert before.kept == after.records_in
    for stage in stages:
        rejected = run.rejected(stage.stage)
        if stage.stage != "expand":  # expansion grows trees from seeds; every later stage keeps or drops
            assert stage.kept + len(rejected) == stage.records_in
        assert all(r.drop_stage == stage.stage and r.drop_reason for r in rejected)
        assert sum(stage.dropped.values()) == len(rejected)
    # What the expansion made, what came through the per-record stages, what each whole-set stage kept:
    per_record = {s.stage: s for s in stages}
    assert len(run.kept("expand")) == per_record["expand"].kept
    assert len(run.survivors()) == per_record["judge"].kept
    assert len(run.kept("semantic_dedup")) == per_record["semantic_dedup"].kept
    select = stages[-1]
    assert select.kept == report.rows == min(config.budget.max_records, select.records_in)
    assert select.dropped.get("not_selected", 0) == select.records_in - select.kept
    rows = pq.read_table(run.dataset_dir / "data").to_pylist()
    assert all(r["quality_score"] is not None and r["cluster"] is not None for r in rows)
    for dropped in run.rejected("exact_dedup") + run.rejected("near_dedup") + run.rejected("semantic_dedup"):
        assert dropped.duplicate_of is not None


def test_report_measures_diversity_and_relevance(embedded_run):
    config, report, run = embedded_run
    metrics = report.metrics
    expand = report.stages[0]
    assert metrics.rows == report.rows
    assert metrics.generated == expand.kept + sum(expand.dropped.values())
    assert 0 < metrics.mean_distance < 1.5 and 0 < metrics.seed_similarity <= 1
    assert 1 <= metrics.clusters_covered <= metrics.clusters and 0 < metrics.distinct_bigrams <= 1
    assert describe_metrics(metrics) in (run.dataset_dir / "README.md").read_text()


def test_failed_requests_become_rejected_records(tmp_path):
    """The whole pipeline over a flaky OpenAI-compatible server, partial results asked for: the run
    finishes, and every request that still fails after its retries is a rejected record with its reason."""
    with FaultyServer(fail_share=1.0, timeout_s=0.5, dead_when="haiku") as server:
        config = tiny_config(
            write_seeds(tmp_path), tmp_path / "runs",
            llm={"backend": "openai", "base_url": server.base_url, "max_retries": 2, "backoff_s": 0.01,
                 "timeout_s": 0.5},
            aide__personas=0, budget__allow_partial=True, include_seeds=True,
            quality=GATE_OFF,  # this test is about failures
        )
        report = run_here(config)
    assert report.status == "partial" and "(http_500 2)" in report.problem
    run = Run(Path(report.dataset).parent)
    rejected = run.rejected("expand") + run.rejected("respond")
    failures = [r for r in rejected if r.drop_reason == "llm_error"]
    assert [r.id for r in failures] == ["s-haiku"]  # its answer never came; nor did its children
    assert failures[0].drop_stage == "respond"
    assert failures[0].drop_detail == "http_500: boom (after 3 tries)"
    assert server.failed_once > 0  # transient faults were retried away
    rows = pq.read_table(run.dataset_dir / "data").to_pylist()
    assert len(rows) == report.rows > len(TINY_SEEDS)
    assert {r["model"] for r in rows if r["strategy"] == "aide"} == {"faulty-model"}


@pytest.mark.parametrize("error", [OSError("disk hiccup"), UserError("seeds.jsonl:3: bad line")])
def test_a_failed_shard_task_is_retried_unless_the_user_must_fix_something(tmp_path, monkeypatch, error):
    """Under the Prefect flow, fault injected: each shard task fails once as it writes its output, as a
    full disk or a crashed worker would. Prefect retries such a task; a UserError fails the run at once."""
    attempts = Counter()
    write_shard = Run.write_shard

    def fails_once(run, index, *args):
        attempts[index] += 1
        if attempts[index] == 1:
            raise error
        return write_shard(run, index, *args)

    with FaultyServer() as server:
        config = tiny_config(
            write_seeds(tmp_path), tmp_path / "runs", llm={"backend": "openai", "base_url": server.base_url},
            aide__personas=0, quality=GATE_OFF, orchestration={"task_retries": 2, "retry_delay_s": 0.01},
        )
        reference = build_dataset(config.model_copy(update={"run_id": "reference"}))
        monkeypatch.setattr(Run, "write_shard", fails_once)
        if isinstance(error, UserError):
            with pytest.raises(UserError):
                build_dataset(config)
            assert set(attempts.values()) == {1}
            return
        report = build_dataset(config)
    assert len(attempts) == 1 + -(-len(TINY_SEEDS) // config.shard_size) > 1  # the seeds' shard and AIDE's ...
    assert set(attempts.values()) == {2}  # ... each failed once and passed on its retry
    tables = [pq.read_table(Path(r.dataset) / "data") for r in (reference, report)]
    assert tables[0].equals(tables[1])  # a retried shard starts again from its plan
