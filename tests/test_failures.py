"""Failures must not cost data silently: the whole pipeline against a real OpenAI-compatible server
on loopback that goes down, refuses, or fails part of its requests.

Every run here is compared with one uninterrupted, fault-free run of the same config: an outage the
run waits out, a rerun after the server came back, and injected transport faults all end with
exactly its dataset."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from test_pipeline import write_seeds

from conftest import GATE_OFF, germinate, tiny_config
from germinate.driver import run_here
from germinate.errors import RunFailed
from germinate.flows.build import build_dataset
from germinate.runs import Run, prepare_run
from servers import FaultyServer

# The gate without the embedding stages (they have their own tests): heuristics, dedup and the judge.
GATE = {**GATE_OFF, **{stage: {"enabled": True} for stage in ("heuristics", "exact_dedup", "near_dedup", "judge")}}


def config_for(server: FaultyServer, folder: Path, **changes):
    llm = {"backend": "openai", "base_url": server.base_url, "backoff_s": 0.01, "timeout_s": 0.5,
           "outage_timeout_s": 30}
    changes = {"aide__personas": 0, "quality": GATE, **changes}
    return tiny_config(folder / "seeds.jsonl", folder / "runs", llm={**llm, **changes.pop("llm", {})}, **changes)


def dataset(report: dict):
    return pq.read_table(Path(report.dataset) / "data")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("failures")
    write_seeds(folder)
    return folder


@pytest.fixture(scope="module")
def reference(folder):
    """The uninterrupted run on a server that never fails, and how many requests it took."""
    with FaultyServer(delay_s=0.02) as server:
        report = run_here(config_for(server, folder, run_id="reference"))
    assert report.status == "complete" and report.failed_calls == 0
    return dataset(report), server.requests


def test_an_outage_the_run_waits_out_costs_nothing(folder, reference, caplog):
    table, requests = reference
    with FaultyServer(delay_s=0.02, outage_after=requests // 2, outage_s=2.0) as server:
        with caplog.at_level(logging.WARNING, logger="germinate.llm"):
            report = run_here(config_for(server, folder, run_id="outage"))
    said = [r.getMessage() for r in caplog.records]
    assert sum("stopped answering" in m for m in said) == 1 and sum("answers again" in m for m in said) == 1
    assert report.failed_calls == 0 and dataset(report).equals(table)


def test_a_server_gone_for_good_fails_the_run_and_a_rerun_recovers_it(folder, reference):
    """Through the command line: exit code 2, one line naming the server, no dataset. Then the same
    command with the server back finishes the run, asking only what was never answered."""
    table, requests = reference
    with FaultyServer(delay_s=0.02, outage_after=requests // 2) as server:
        config = config_for(server, folder, run_id="lost", llm={"outage_timeout_s": 2})
        path = folder / "lost.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        result = germinate("run", "--config", str(path), cwd=folder, timeout=300)
    assert result.returncode == 2, result.stderr
    waiting, stopped = result.stderr.strip().splitlines()
    assert waiting.startswith(f"warning: {server.base_url} stopped answering (connection:")
    assert waiting.endswith("requests wait for it, up to 2s (llm.outage_timeout_s)")
    assert stopped.startswith(f"error: llm: {server.base_url} did not answer for 2s (llm.outage_timeout_s"), stopped
    run = folder / "runs" / "lost"
    assert not (run / "dataset").exists() and not (run / "report.json").exists()

    with FaultyServer(delay_s=0.02) as back:  # another port: where the server is does not shape the data
        report = run_here(config.model_copy(update={"llm": config.llm.model_copy(update={"base_url": back.base_url})}))
    assert report.status == "complete" and dataset(report).equals(table)
    assert back.requests < requests  # what was answered before came from the cache


def test_transport_faults_change_nothing_in_the_data(folder, reference):
    """20% of requests fail once (429, 500, or no answer within the timeout): retried with the same
    sampling seed, they end in the same dataset."""
    table, _ = reference
    with FaultyServer(delay_s=0.02, fail_share=0.2, kinds=("rate_limit", "server_error", "slow"),
                      timeout_s=0.5) as server:
        report = run_here(config_for(server, folder, run_id="faults"))
    assert server.failed_once >= 3 and report.failed_calls == 0
    assert dataset(report).equals(table)


def test_a_failed_judgement_drops_no_record_and_too_many_failures_fail_the_run(folder):
    """Every judge request fails (HTTP 500) with the judges set to drop what scores low. The run
    fails for its data (a scheduled run ends Failed, no dataset); asked for partial results, it keeps
    every record, seeds included, each noted as not judged."""
    with FaultyServer(delay_s=0.01, dead_when="Assess it.") as server:
        config = config_for(server, folder, run_id="judge", llm={"max_retries": 1}, include_seeds=True,
                            aide__on_reflection_fail="drop", quality={**GATE, "judge": {"on_fail": "drop"}})
        state = build_dataset(config, return_state=True)
        assert state.is_failed()
        error = state.result(raise_on_failure=False)
        assert isinstance(error, RunFailed)
        assert "LLM requests failed after their retries (http_500 " in str(error)
        assert "no dataset written: run the same command again to retry the unanswered requests" in str(error)
        run = Run(config.output_dir / "judge")
        assert not run.dataset_dir.exists()
        assert json.loads(run.report_path.read_text())["status"] == "failed"

        partial = config.model_copy(update={"budget": config.budget.model_copy(update={"allow_partial": True})})
        report = build_dataset(partial)
    assert report.status == "partial" and "http_500" in report.problem
    stages = {s.stage: s for s in report.stages}
    assert stages["judge"].dropped == {} and "low_reflection_score" not in stages["expand"].dropped
    rows = dataset(report).to_pylist()
    assert {"s-sum", "s-apples", "s-haiku"} <= {r["id"] for r in rows}
    assert all(r["quality_critique"].startswith("not judged: http_500") for r in rows)
    assert all(r["reflection_critique"].startswith("not judged: http_500") for r in rows if r["strategy"] == "aide")


def test_one_process_per_run(folder):
    """A second process with the same run id stops at once; a lock left by kill -9 does not block
    the resume, which also clears what the killed writer left half-written."""
    with FaultyServer() as server:
        config, run = prepare_run(config_for(server, folder, run_id="locked"))
        path = folder / "locked.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        with run.locked():
            second = germinate("run", "--config", str(path), cwd=folder)
    assert second.returncode == 2
    assert second.stderr.strip() == f"error: run 'locked' is being written by pid {os.getpid()} on " \
                                    f"{os.uname().nodename}; wait for it to end, or pick another --run-id"

    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from germinate.runs import Run
with Run(__import__('pathlib').Path({str(run.root)!r})).locked():
    print('locked', flush=True)
    time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    dead = 2**22 + 1  # above Linux's default pid_max: no live process has it
    left = [run.root / f".report.json.tmp-{dead}", run.root / "shards" / f".00001.done.json.tmp-{dead}",
            run.root / "stages" / "respond" / "rejected-00007.parquet"]  # the last one without its marker
    finished = [run.root / "shards" / "00003.done.json", run.root / "stages" / "respond" / "rejected-00003.parquet"]
    for path in left + finished:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("written")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with run.locked():
        assert not any(path.exists() for path in left)
        assert all(path.exists() for path in finished)  # a finished shard's outputs stay


def test_a_run_that_stops_moving_says_on_what_and_stops(folder, reference):
    """Through the command line, shards on threads: the server takes every request after the run's
    check and never answers (within llm.timeout_s). The run says what it waits on after
    orchestration.stall_s, stops after stall_timeout_s with exit 2 and one error line, and writes no
    dataset; the same command resumes to the reference once the server answers."""
    table, _ = reference
    with FaultyServer() as server:
        server.on_chat = lambda number, _: number > 1 and server.answering.clear()  # the check is answered
        config = config_for(server, folder, run_id="stalled", llm={"timeout_s": 60, "concurrency": 2},
                            orchestration={"stall_s": 1, "stall_timeout_s": 5})
        path = folder / "stalled.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        result = germinate("run", "--config", str(path), cwd=folder, timeout=300)
        server.answering.set()
        server.on_chat = None
        assert result.returncode == 2, result.stderr
        *waiting, stopped = result.stderr.strip().splitlines()
        assert waiting and all(line.startswith("warning: nothing done for ") for line in waiting)
        assert f"2 requests sent to {server.base_url} (2 in flight, " in waiting[-1]
        assert stopped.startswith("error: the run stalled: nothing done for 5s (orchestration.stall_timeout_s); "
                                  "waiting on ")
        assert not (folder / "runs" / "stalled" / "dataset").exists()
        resumed = germinate("run", "--config", str(path), cwd=folder, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert pq.read_table(folder / "runs" / "stalled" / "dataset" / "data").equals(table)
