"""A finished run as a user ships it: the Hub layout and card, `germinate publish`, `germinate export`.

No Hub is reachable here, so `RecordingHub` (tests/servers.py), a local HTTP server that answers
huggingface_hub's calls and records them, stands in for it: the real client is pointed at it with
HF_ENDPOINT. It takes every file inline; the Hub's LFS/Xet storage for large files is not emulated.
"""

import json
import os
import secrets
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Features, load_dataset

from conftest import TINY_SEEDS, germinate
from germinate.card import CLUSTER_PLOT, SCORE_PLOT
from germinate.records import DATASET_SCHEMA
from germinate.runs import Run
from servers import FaultyServer, RecordingHub

TOKEN = "hf_" + secrets.token_hex(16)


def hub_env(hub: RecordingHub, home: Path, token: str | None = TOKEN) -> dict[str, str]:
    """huggingface_hub pointed at the recording server, with a token only from HF_TOKEN."""
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": token or "", "HF_HOME": str(home), "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def card_metadata(folder: Path) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """`germinate run` over a local OpenAI-compatible server with the whole quality gate and
    `hub.repo_id` set: the run publishes itself when it ends. Returns the run, the hub and the output."""
    folder = tmp_path_factory.mktemp("published")
    (folder / "seeds.jsonl").write_text("".join(json.dumps(s) + "\n" for s in TINY_SEEDS))
    with FaultyServer() as server, RecordingHub() as hub:
        config = {
            "seeds": str(folder / "seeds.jsonl"), "output_dir": str(folder / "runs"), "run_id": "demo",
            "llm": {"backend": "openai", "base_url": server.base_url},
            "aide": {"hops": 1, "attributes": 1, "operations": ["concretizing"], "personas": 0},
            "budget": {"max_llm_calls": 40, "max_records": 6}, "include_seeds": True,
            "quality": {"heuristics": {"languages": ["en", "de"]}},
            "hub": {"repo_id": "germinate-test/demo", "license": "apache-2.0", "private": True},
        }
        (folder / "run.yaml").write_text(yaml.safe_dump(config))
        result = germinate("run", "--config", str(folder / "run.yaml"), cwd=folder, env=hub_env(hub, folder / "hf"),
                           timeout=600)
    assert result.returncode == 0, result.stderr
    return Run(folder / "runs" / "demo"), hub, result.stdout + result.stderr


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_run_with_a_repo_id_publishes_its_folder_and_no_token_is_written(published):
    run, hub, output = published
    assert hub.repos["germinate-test/demo"] == local_files(run.dataset_dir)
    assert {"README.md", CLUSTER_PLOT, SCORE_PLOT} <= set(hub.repos["germinate-test/demo"])
    assert hub.private["germinate-test/demo"] is True
    assert hub.calls and all(auth == f"Bearer {TOKEN}" for _, _, auth in hub.calls)  # it did use the token
    assert json.loads(run.report_path.read_text())["published"].startswith(f"{hub.url}/datasets/germinate-test/demo")
    # ... and the token is nowhere else: not in the run directory, the output, or Prefect's database and logs
    assert TOKEN not in output
    prefect_home = Path(os.environ["PREFECT_HOME"])
    for path in [*run.root.rglob("*"), *prefect_home.rglob("*")]:
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_the_folder_loads_by_its_card_with_a_messages_column(published):
    run, _, _ = published
    dataset = load_dataset(str(run.dataset_dir), split="train")
    metadata = card_metadata(run.dataset_dir)
    assert dataset.column_names == DATASET_SCHEMA.names
    assert dataset.features == Features._from_yaml_list(metadata["dataset_info"]["features"])
    assert metadata["license"] == "apache-2.0" and metadata["size_categories"] == ["n<1K"]
    assert metadata["language"] == ["en", "de"]  # what the heuristics keep
    assert metadata["dataset_info"]["splits"][0]["num_examples"] == len(dataset) > 0
    for row in dataset:
        assert row["messages"] == [
            {"role": "user", "content": row["instruction"] + (f"\n\nInput:\n{row['input']}" if row["input"] else "")},
            {"role": "assistant", "content": row["output"]},
        ]


def test_the_card_tells_how_the_data_was_made(published):
    run, _, _ = published
    card = (run.dataset_dir / "README.md").read_text()
    report = json.loads(run.report_path.read_text())
    assert "**aide** strategy" in card and "`faulty-model`" in card and "seeds.jsonl" in card
    rows = pq.read_table(run.dataset_dir / "data").to_pylist()
    seeds = sum(row["strategy"] == "seed" for row in rows)
    assert 0 < seeds < len(rows)  # both kinds, each counted
    assert f"**{len(rows) - seeds} generated** (aide {len(rows) - seeds}), of 6 asked for" in card
    assert f"**{seeds} seed tasks**, on top, as given" in card
    for stage in report["stages"]:
        assert f"| {stage['stage']} | {stage['records_in']} | {stage['kept']} |" in card
    assert f"![cluster_sizes]({CLUSTER_PLOT})" in card and f"![quality_scores]({SCORE_PLOT})" in card
    for image in (CLUSTER_PLOT, SCORE_PLOT):
        assert (run.dataset_dir / image).read_bytes().startswith(b"\x89PNG")
    settings = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert settings["seeds"] == "seeds.jsonl" and "tcia" not in settings and "output_dir" not in settings
    assert 'load_dataset("germinate-test/demo", split="train")' in card


def test_publish_replaces_an_earlier_upload_whole(published, tmp_path):
    """A second publish with fewer data files deletes the first one's extra shards, so the Hub's
    split is never a mix of two runs; a new branch is created for --revision."""
    run, _, _ = published
    copy = Run(tmp_path / "copy")
    copy.root.mkdir()
    copy.config_path.write_bytes(run.config_path.read_bytes())
    copy.report_path.write_bytes(run.report_path.read_bytes())
    records, card = run.dataset(), local_files(run.dataset_dir)["README.md"]
    with RecordingHub() as hub:
        env = hub_env(hub, tmp_path / "hf")
        copy.write_dataset(records, {"README.md": card}, shard_bytes=1)  # one row a file
        assert germinate("publish", str(copy.root), "--repo-id", "org/name", cwd=tmp_path, env=env).returncode == 0
        assert sum(p.startswith("data/") for p in hub.repos["org/name"]) == len(records)
        copy.write_dataset(records, {"README.md": card})
        result = germinate("publish", str(copy.root), "--repo-id", "org/name", "--revision", "v2", cwd=tmp_path,
                           env=env)
    assert result.returncode == 0, result.stderr
    assert hub.repos["org/name"] == local_files(copy.dataset_dir)
    assert b'load_dataset("org/name", split="train")' in hub.repos["org/name"]["README.md"]  # not a local path
    assert ("POST", "/api/datasets/org/name/branch/v2", f"Bearer {TOKEN}") in hub.calls
    assert hub.private["org/name"] is False


def test_publish_leaves_the_users_other_files_and_never_makes_private_data_public(published, tmp_path):
    run, _, _ = published
    with RecordingHub() as hub:
        theirs, old = "data/test-00000-of-00001.parquet", "data/train-00000-of-00003.parquet"
        hub.repos["org/public"] = {theirs: b"the user's", old: b"an earlier publish"}
        hub.private["org/public"] = False
        env = hub_env(hub, tmp_path / "hf")
        refused = germinate("publish", str(run.root), "--repo-id", "org/public", "--private", cwd=tmp_path, env=env)
        assert refused.returncode == 2 and "the repo exists and is public" in refused.stderr
        assert set(hub.repos["org/public"]) == {theirs, old}
        result = germinate("publish", str(run.root), "--repo-id", "org/public", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    # its own old shard is replaced; the user's test split is not germinate's to delete
    assert set(hub.repos["org/public"]) == {theirs, *local_files(run.dataset_dir)}


def test_a_run_that_would_publish_without_a_token_stops_before_spending_anything(tmp_path):
    (tmp_path / "run.yaml").write_text("hub: {repo_id: org/name}\nrun_id: no-token\n")
    env = {"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    result = germinate("run", "--config", str(tmp_path / "run.yaml"), "--output-dir", str(tmp_path / "runs"),
                       cwd=tmp_path, env=env)
    assert result.returncode == 2 and "no Hugging Face token" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("case", ["no token", "hub down", "bad repo id", "not a run"])
def test_publish_errors_exit_2_with_one_line(published, tmp_path, case):
    run, _, _ = published
    with RecordingHub() as hub:
        env = hub_env(hub, tmp_path / "hf", token=None if case == "no token" else TOKEN)
        if case == "hub down":
            env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: nothing listens
            env["HF_HUB_ETAG_TIMEOUT"] = env["HF_HUB_DOWNLOAD_TIMEOUT"] = "2"
        target = tmp_path if case == "not a run" else run.root
        repo = "not a repo" if case == "bad repo id" else "org/name"
        result = germinate("publish", str(target), "--repo-id", repo, cwd=tmp_path, env=env)
    expected = {"no token": "no Hugging Face token", "hub down": "org/name: publishing to the Hub failed",
                "bad repo id": "--repo-id: 'not a repo'", "not a run": "not a germinate run directory"}[case]
    assert result.returncode == 2 and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and TOKEN not in result.stderr
    assert not hub.repos.get("org/name")


def test_export_writes_each_trainer_format(published, tmp_path):
    run, _, _ = published
    rows = pq.read_table(run.dataset_dir / "data").to_pylist()
    for fmt in ("messages", "alpaca", "sharegpt"):
        result = germinate("export", str(run.root), "--format", fmt, "--output", str(tmp_path / f"{fmt}.jsonl"),
                           cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in (tmp_path / f"{fmt}.jsonl").read_text().splitlines()]
        assert len(lines) == len(rows)
        for line, row in zip(lines, rows):
            turns = row["messages"]
            expected = {
                "messages": {"messages": turns},
                "alpaca": {"instruction": row["instruction"], "input": row["input"] or "", "output": row["output"]},
                "sharegpt": {"conversations": [{"from": "human", "value": turns[0]["content"]},
                                               {"from": "gpt", "value": turns[1]["content"]}]},
            }[fmt]
            assert line == expected
    result = germinate("export", str(run.root), "--format", "csv", cwd=tmp_path)
    assert result.returncode == 2 and "--format: 'csv' is not one of messages, alpaca, sharegpt" in result.stderr



def test_the_cluster_plot_of_a_selection_into_many_clusters_is_drawn():
    """A selection into hundreds of clusters (k up to 1024) still gets its plot on the card: as one
    outline of touching bars, which draws as fast as forty."""
    from germinate.card import plots
    from germinate.records import Record

    rows = [Record(id=f"r{i}", instruction=f"task {i}", cluster=i % 300 if i % 3 else i % 7) for i in range(1500)]
    image = plots(rows)[CLUSTER_PLOT]
    assert image.startswith(b"\x89PNG") and len(image) > 5000
