"""Kill a run after its expand stage, start it again with the same run id: nothing is paid
twice and the dataset equals that of an uninterrupted run, through the whole quality gate."""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pyarrow.parquet as pq
import yaml

from conftest import ROOT, tiny_config


def cache_rows(run_dir) -> int:
    with sqlite3.connect(run_dir / "llm_cache.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def command(config_path, run_id):
    return [sys.executable, "-m", "germinate.cli", "run", "--config", str(config_path), "--run-id", run_id]


def test_resume_after_kill_repeats_no_call_and_matches_an_uninterrupted_run(seeds_file, tmp_path):
    config = tiny_config(seeds_file, tmp_path / "runs", aide__personas=0, aide__hops=1,
                         generation__response_max_tokens=160)  # room to finish: cut-off answers are dropped
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    runs = tmp_path / "runs"
    env = {**os.environ, "COLUMNS": "200"}

    # Its own process group: the kill takes Prefect's ephemeral API server (a child) down with it.
    first = subprocess.Popen(command(config_path, "resumed"), cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    expand = runs / "resumed" / "stages" / "expand"
    deadline = time.monotonic() + 900  # generous: a busy machine is slow, not wrong
    try:
        while len(list(expand.glob("*.done.json"))) < 3:  # the seeds' shard, then 3 seeds in AIDE shards of 2
            assert first.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have ended on its own (then the test fails)
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (runs / "resumed" / "dataset").exists()
    cached_before_resume = cache_rows(runs / "resumed")

    resumed = subprocess.run(command(config_path, "resumed"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run(command(config_path, "whole"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr

    reports = {name: json.loads((runs / name / "report.json").read_text()) for name in ("resumed", "whole")}
    expand, *later = reports["resumed"]["stages"]
    assert expand["resumed"] is True  # the finished stage was not run again
    assert [s["llm_calls"] for s in later] == [s["llm_calls"] for s in reports["whole"]["stages"][1:]]
    # Every request the second process sent was new to the cache: none was sent twice.
    sent_after_resume = sum(s["llm_calls"] - s["cached_calls"] for s in later)
    assert cached_before_resume + sent_after_resume == cache_rows(runs / "resumed") == cache_rows(runs / "whole")
    tables = {name: pq.read_table(runs / name / "dataset" / "data") for name in ("resumed", "whole")}
    assert tables["resumed"].num_rows > 3
    assert tables["resumed"].equals(tables["whole"])
