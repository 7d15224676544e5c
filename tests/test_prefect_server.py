"""germinate under a real Prefect server on loopback, as a user of the UI meets it: a build's flow
run, its task runs and its artifacts read back through the Prefect client; `germinate schedule`
running a scheduled deployment; prefect.yaml's deployments registered with `prefect deploy`."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.settings import PREFECT_API_URL, temporary_settings
from test_cli import free_port

from conftest import ROOT, TINY_SEEDS, germinate
from servers import FaultyServer


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`germinate ui` on a free loopback port, its SQLite database in a temporary run root."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "germinate.cli", "ui", "--port", str(port), "--output-dir", str(root / "runs")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PREFECT_HOME": str(root / "home")},
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_until(lambda: healthy(api) or process.poll() is not None, 180, "the Prefect server")
        assert process.poll() is None, "germinate ui exited"
        assert (root / "runs" / "prefect.db").exists()  # the database lives under the run root
        yield api, root
    finally:
        process.terminate()
        process.wait(30)


def client_of(api: str):
    return temporary_settings(updates={PREFECT_API_URL: api})


def write_config(folder: Path, server: FaultyServer, **extra) -> Path:
    (folder / "seeds.jsonl").write_text("".join(json.dumps(s) + "\n" for s in TINY_SEEDS))
    config = {
        "seeds": str(folder / "seeds.jsonl"), "output_dir": str(folder / "runs"),
        "llm": {"backend": "openai", "base_url": server.base_url},
        "aide": {"hops": 1, "attributes": 1, "operations": ["concretizing"], "personas": 0},
        "budget": {"max_llm_calls": 30, "max_records": 5}, **extra,
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    return folder / "run.yaml"


def test_the_ui_of_a_server_on_any_port_calls_that_port(prefect_server):
    api, _ = prefect_server
    settings = httpx.get(api.removesuffix("/api") + "/ui-settings", timeout=10).json()
    assert settings["api_url"] == api


LLM_STAGES = {"progress-llm-calls", "progress-expand", "progress-respond", "progress-judge"}


def test_a_build_shows_its_flow_run_task_runs_artifacts_and_logs(prefect_server, tmp_path):
    """The flow run is named after the run id; each LLM stage has a progress artifact that moves while it
    runs and ends at 100; germinate's own lines (each stage's numbers, the last line) are in its logs."""
    api, _ = prefect_server
    seen: list[tuple[str, float]] = []  # progress artifacts as the UI showed them while the run went on
    running = threading.Event()
    running.set()

    def watch() -> None:
        this_run = FlowRunFilter(name=FlowRunFilterName(any_=["ui-run"]))  # named so once it has started
        with client_of(api), get_client(sync_client=True) as client:
            while running.is_set():
                seen.extend((a.key, a.data) for a in client.read_artifacts(flow_run_filter=this_run)
                            if a.type == "progress")
                time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:  # slow enough answers, two at a time: the stages run for seconds
        with FaultyServer(delay_s=0.5) as llm_server:
            config = write_config(tmp_path, llm_server, run_id="ui-run")
            result = germinate("run", "--config", str(config), "--concurrency", "2", cwd=tmp_path,
                               env={"PREFECT_API_URL": api}, timeout=600)
    finally:
        running.clear()
        watcher.join()
    assert result.returncode == 0, result.stderr
    with client_of(api), get_client(sync_client=True) as client:
        (flow_run,) = [r for r in client.read_flow_runs() if r.parameters["config"].get("run_id") == "ui-run"]
        assert flow_run.state.is_completed()
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        task_runs = {t.name for t in client.read_task_runs(flow_run_filter=runs)}
        artifacts = client.read_artifacts(flow_run_filter=runs)
        logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))]
    stats = json.loads((tmp_path / "runs" / "ui-run" / "report.json").read_text())
    assert flow_run.name == "ui-run" and {"germinate", "aide"} <= set(flow_run.tags)
    assert {"shard-0-seeds", "shard-1-aide", "semantic_dedup", "select"} <= task_runs
    progress = {a.key: a for a in artifacts if a.type == "progress"}
    assert LLM_STAGES <= set(progress)
    assert all(progress[key].data == 100 and "done" in progress[key].description for key in LLM_STAGES)
    assert any(key in LLM_STAGES and 0 < value < 100 for key, value in seen), seen  # it moved before the end
    (report,) = [a for a in artifacts if a.key == "germinate-report"]
    assert "# germinate run `ui-run`" in report.data and "| judge |" in report.data
    assert f"{stats['rows']} rows" in report.data and "| kept/generated |" in report.data
    (sample,) = [a for a in artifacts if a.key == "germinate-sample"]
    rows = json.loads(sample.data)
    assert 0 < len(rows) <= stats["rows"] and set(rows[0]) == {"strategy", "hop", "instruction", "output", "score"}
    assert rows[0]["strategy"] == "aide" and sum(row["strategy"] == "seed" for row in rows) <= 3
    assert any(line.startswith("expand: ") and " kept, " in line for line in logs), logs
    assert any(line.startswith(f"{stats['rows']} rows (") for line in logs), logs


def test_serve_runs_the_flow_on_its_schedule(prefect_server, tmp_path):
    """The served deployment carries the cron schedule and the config; a run of it (as the
    scheduler would start one) is executed by the serving process and writes a dataset."""
    from prefect.deployments import run_deployment

    api, _ = prefect_server
    with FaultyServer() as llm_server:
        config = write_config(tmp_path, llm_server)
        env = {**os.environ, "PREFECT_API_URL": api}
        serving = subprocess.Popen(
            [sys.executable, "-m", "germinate.cli", "schedule", "--config", str(config), "--cron", "0 3 * * *",
             "--name", "nightly-test"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            with client_of(api), get_client(sync_client=True) as client:
                deployment = wait_until(
                    lambda: next((d for d in client.read_deployments() if d.name == "nightly-test"), None),
                    120, "the served deployment",
                )
                (schedule,) = deployment.schedules
                assert schedule.schedule.cron == "0 3 * * *" and schedule.active
                assert deployment.parameters["config"]["budget"] == {"max_llm_calls": 30, "max_records": 5,
                                                                         "max_failed_share": 0.02,
                                                                         "allow_partial": False, "price": None,
                                                                         "max_tokens": None, "max_cost": None}
                flow_run = run_deployment(deployment.id, timeout=0)
                done = wait_until(
                    lambda: (r := client.read_flow_run(flow_run.id)).state.is_final() and r, 400, "the served run"
                )
            assert done.state.is_completed(), done.state
        finally:
            serving.terminate()
            serving.wait(30)
    (run_dir,) = (tmp_path / "runs").iterdir()  # a new run id, chosen by the run
    assert json.loads((run_dir / "report.json").read_text())["rows"] > 0


def test_schedule_refuses_what_cannot_run(tmp_path):
    """`germinate schedule` without a Prefect server, or with a bad cron, exits 2 saying why; so does its
    old name, `serve`, which also says to use `schedule`."""
    config = tmp_path / "run.yaml"
    config.write_text("budget: {max_records: 4}\n")
    no_server = germinate("schedule", "--config", str(config), "--cron", "0 3 * * *", cwd=tmp_path,
                          env={"PREFECT_API_URL": ""})
    assert no_server.returncode == 2 and "schedule needs a Prefect server: start `germinate ui`" in no_server.stderr
    bad_cron = germinate("schedule", "--config", str(config), "--cron", "at 3", cwd=tmp_path,
                         env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert bad_cron.returncode == 2 and "--cron: 'at 3' is not a cron expression" in bad_cron.stderr
    old_name = germinate("serve", "--config", str(config), "--cron", "at 3", cwd=tmp_path,
                         env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert old_name.returncode == 2 and "'serve' is deprecated. Use `germinate schedule`." in old_name.stderr
    assert "--cron: 'at 3' is not a cron expression" in old_name.stderr


def test_prefect_yaml_registers_a_paused_deployment_per_example(prefect_server):
    api, root = prefect_server
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(root / "home")}
    for command in (["work-pool", "create", "germinate", "--type", "process", "--overwrite"],
                    ["--no-prompt", "deploy", "--all"]):
        result = subprocess.run([sys.executable, "-m", "prefect", *command], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
    examples = {p.stem for p in (ROOT / "examples").glob("*.yaml")}
    with client_of(api), get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments() if d.work_pool_name == "germinate"}
    assert set(deployments) == examples
    for deployment in deployments.values():
        (schedule,) = deployment.schedules
        assert schedule.schedule.cron == "0 3 * * *" and not schedule.active
        assert deployment.entrypoint == "flows/build.py:build_dataset"
        assert deployment.parameter_openapi_schema["required"] == ["config"]
