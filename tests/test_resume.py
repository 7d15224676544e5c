"""Kill a run midway (kill -9, its whole process group), start it again with the same run id: what
was answered is not asked again, and the dataset equals that of an uninterrupted run, through the
whole quality gate. The server is a loopback OpenAI-compatible one, slow enough to be caught midway."""

import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from conftest import ROOT, tiny_config
from germinate.config import RunConfig
from germinate.driver import run_here
from servers import FaultyServer
from test_pipeline import write_seeds

SEEDS = [{"id": f"s{i}", "instruction": f"Write a short story about a {animal} who learns to {skill}."}
         for i, (animal, skill) in enumerate([("fox", "swim"), ("crow", "count"), ("whale", "sing"),
                                              ("mole", "paint"), ("goat", "climb"), ("owl", "cook")])]


def cache_rows(run_dir) -> int:
    with sqlite3.connect(run_dir / "llm_cache.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def command(config_path, run_id):
    return [sys.executable, "-m", "germinate.cli", "run", "--config", str(config_path), "--run-id", run_id]


def test_resume_after_kill_asks_nothing_twice_and_matches_an_uninterrupted_run(tmp_path):
    seeds = write_seeds(tmp_path)
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    runs = tmp_path / "runs"
    env = {**os.environ, "COLUMNS": "200"}
    with FaultyServer(delay_s=0.05) as server:
        config = tiny_config(seeds, runs, llm={"backend": "openai", "base_url": server.base_url, "concurrency": 2},
                             aide__personas=1, shard_size=1, orchestration={"workers": 2},
                             budget={"max_llm_calls": 90, "max_records": 14})
        config_path = tmp_path / "run.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))

        # Its own process group: the kill takes every child with it.
        first = subprocess.Popen(command(config_path, "resumed"), cwd=ROOT, env=env, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shards = runs / "resumed" / "shards"
        deadline = time.monotonic() + 300  # generous: a busy machine is slow, not wrong
        try:
            while len(list(shards.glob("*.done.json"))) < 3:  # the seeds' shard and two seeds' trees
                assert first.poll() is None, "the run ended before it could be interrupted"
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            with contextlib.suppress(ProcessLookupError):  # it may have ended on its own (then the test fails)
                os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        assert not (runs / "resumed" / "dataset").exists()
        assert len(list(shards.glob("*.done.json"))) < 7  # caught midway: some shards were not finished
        cached_before_resume = cache_rows(runs / "resumed")

        asked = server.requests
        resumed = subprocess.run(command(config_path, "resumed"), cwd=ROOT, env=env, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        sent_after_resume = server.requests - asked - 1  # besides its one-token check of the server
        whole = subprocess.run(command(config_path, "whole"), cwd=ROOT, env=env, capture_output=True, text=True)
        assert whole.returncode == 0, whole.stderr

    reports = {name: json.loads((runs / name / "report.json").read_text()) for name in ("resumed", "whole")}
    assert [s["llm_calls"] for s in reports["resumed"]["stages"]] == [s["llm_calls"] for s in reports["whole"]["stages"]]
    # Every request the second process sent was new to the cache: none was sent twice.
    assert 0 < cached_before_resume and 0 < sent_after_resume
    assert cached_before_resume + sent_after_resume == cache_rows(runs / "resumed") == cache_rows(runs / "whole")
    tables = {name: pq.read_table(runs / name / "dataset" / "data") for name in ("resumed", "whole")}
    assert tables["resumed"].num_rows > len(SEEDS)
    assert tables["resumed"].equals(tables["whole"])


def test_a_run_started_before_the_judge_was_renamed_resumes(tmp_path, caplog):
    """A run of 0.1.0 called the judge stage `reflect` (in its config, its folder, its shards' numbers)
    and wrote records without the columns added since: resumed with a config that says `judge`, it is
    moved to the new name and ends as a run started now does. A config that still says `reflect`
    loads, with a warning."""
    seeds = write_seeds(tmp_path)
    with FaultyServer() as server:
        config = tiny_config(seeds, tmp_path / "runs", llm={"backend": "openai", "base_url": server.base_url},
                             aide__personas=0, quality={"judge": {"tries": 0}})
        now = run_here(config.model_copy(update={"run_id": "now"}))
        run_here(config.model_copy(update={"run_id": "old"}))
        old = tmp_path / "runs" / "old"
        shutil.rmtree(old / "dataset")  # stopped before its whole-set stages, as 0.1.0 left it
        for stage in ("semantic_dedup", "select"):
            shutil.rmtree(old / "stages" / stage)
        (old / "stages" / "judge").rename(old / "stages" / "reflect")
        for written in old.glob("**/*.parquet"):  # 0.1.0's records had no draft answers
            table = pq.read_table(written)
            pq.write_table(table.drop_columns([c for c in table.column_names if c.startswith("draft_")]), written)
        for marker in (old / "shards").glob("*.done.json"):
            marker.write_text(marker.read_text().replace('"stage":"judge"', '"stage":"reflect"'))
        settings = yaml.safe_load((old / "config.yaml").read_text())
        settings["stages"] = ["reflect" if name == "judge" else name for name in settings["stages"]]
        settings["quality"]["reflect"] = settings["quality"].pop("judge")
        del settings["quality"]["reflect"]["margin"], settings["generation"]["samples"]  # settings added since
        (old / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))

        resumed = run_here(config.model_copy(update={"run_id": "old"}))
        with caplog.at_level(logging.WARNING, logger="germinate"):
            assert RunConfig.model_validate(settings).quality.judge.tries == 0
    assert [s.stage for s in resumed.stages] == [s.stage for s in now.stages]
    assert "judge" in [s.stage for s in now.stages]
    assert [s.kept for s in resumed.stages] == [s.kept for s in now.stages]
    assert pq.read_table(old / "dataset" / "data").equals(pq.read_table(Path(now.dataset) / "data"))
    assert not (old / "stages" / "reflect").exists() and (old / "stages" / "judge").exists()
    moved = yaml.safe_load((old / "config.yaml").read_text())
    assert "judge" in moved["stages"] and "judge" in moved["quality"] and "reflect" not in moved["quality"]
    assert "the stage 'reflect' is now called 'judge'" in caplog.text
