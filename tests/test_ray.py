"""Shard tasks on Ray: a local Ray (ray.init on this machine) builds the same dataset as threads, each
server's request limit holds across the workers, a worker killed mid-run costs no data, a run that
stops moving says on what and then stops, and the workers' progress reaches the driver."""

import logging
import os
import re
import signal
import sys

import psutil
import pyarrow.parquet as pq
import pytest
import ray
from test_pipeline import write_seeds

import germinate.flows
from conftest import GATE_OFF, tiny_config
from germinate import progress
from germinate.errors import RunStalled, UserError
from germinate.driver import CALLS, run_here
from germinate.flows.build import build_dataset
from germinate.flows.ray_run import LOCAL_RAY, RayTasks, fair_shares
from germinate.settings import OrchestrationConfig
from servers import FaultyServer

RAY = OrchestrationConfig(task_runner="ray", retry_delay_s=0)


def config_for(tmp_path, llm, **changes):
    """Three seeds, a shard each (two run at once on this machine's two cores), the gate off."""
    llm = {"backend": "openai", "timeout_s": 30, **llm}
    return tiny_config(write_seeds(tmp_path), tmp_path / "threads", llm=llm, aide__personas=0, quality=GATE_OFF,
                       run_id="same", shard_size=1, **changes)


def on_ray(config, folder, build=build_dataset):
    """The run on Ray: as a Prefect flow run (a deployment's), or as `germinate run` makes it."""
    return build(config.model_copy(update={"output_dir": folder, "orchestration": RAY}))


def here_on_ray(config):
    """`germinate run` on Ray, without a Prefect server."""
    return run_here(config, runner=RayTasks)


def at(config, server):
    """The same run against another server (where a server is does not shape the data)."""
    return config.model_copy(update={"llm": config.llm.model_copy(update={"base_url": server.base_url})})


def rows(report):
    return pq.read_table(report.dataset + "/data")


def sender(address) -> psutil.Process:
    """The process that sent a request from `address` (the live socket of that port: an earlier one
    left in TIME_WAIT on it belongs to no process)."""
    return psutil.Process(next(c.pid for c in psutil.net_connections("tcp")
                               if c.pid and c.laddr and c.laddr.port == address[1]))


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of two CPUs for the tests after the first: each run joins it, as a run joins a
    cluster, and leaves it up (starting and stopping Ray takes seconds, 3 to 4 times that on a busy
    machine). The first test starts and stops a Ray of its own, as `germinate run` does."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config=LOCAL_RAY)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def threads_run(tmp_path_factory):
    """The reference: the run on threads, against a server that holds 2 requests at once."""
    folder = tmp_path_factory.mktemp("threads")
    with FaultyServer(delay_s=0.1) as server:
        config = config_for(folder, {"base_url": server.base_url, "concurrency": 2})
        return config, build_dataset(config)


def test_ray_gives_the_threads_result_within_one_request_limit(threads_run, tmp_path, caplog):
    """The same run on a local Ray with a shard per seed, as `germinate run` starts it (no Prefect):
    the same dataset, at most `llm.concurrency` requests in flight at the server although several
    workers send them, and every request counted in the driver's progress. The workers start no
    embedding model (this strategy asks for no vectors): what they make is embedded in the driver.
    (First in the module: no Ray is up yet.)"""
    config, threads = threads_run
    children = []  # of the worker that sent each request: the commands of its child processes

    def look_at_the_sender(number, address):
        worker = sender(address)
        if worker.pid != os.getpid():  # the driver checks the server and embeds
            children.append([" ".join(child.cmdline()) for child in worker.children()])

    with FaultyServer(delay_s=0.1) as server, caplog.at_level(logging.INFO, logger="germinate"):
        server.on_chat = look_at_the_sender
        report = on_ray(at(config, server), tmp_path / "ray", here_on_ray)
    said = [r.getMessage() for r in caplog.records]
    assert "Ray: a local instance" in said  # one shard worker per core:
    assert any(line.startswith("Ray: 2 shard workers on 1 nodes, started in ") for line in said)
    assert server.max_in_flight == 2  # each worker alone would have taken 2
    assert children and not any("germinate.embed" in command for commands in children for command in commands)
    assert progress.done(CALLS) == report.llm_calls == threads.llm_calls
    assert report.rows == threads.rows > 3
    assert rows(report).equals(rows(threads))


def test_each_servers_limit_holds_across_the_workers(local_ray, tmp_path):
    """Two servers of one model, taking 2 and 3 requests at once, and two Ray workers sending: neither
    server ever has more in flight than its own limit, and both are used to it."""
    with FaultyServer(delay_s=0.25) as small, FaultyServer(delay_s=0.25) as large:
        endpoints = [{"base_url": small.base_url, "concurrency": 2}, {"base_url": large.base_url, "concurrency": 3}]
        config = config_for(tmp_path, {"endpoints": endpoints}, aide__attributes=3,
                            budget={"max_llm_calls": 120, "max_records": 40})  # more requests at once
        report = on_ray(config, tmp_path / "ray")
    assert report.status == "complete" and report.rows > 3
    assert small.max_in_flight == 2 and large.max_in_flight == 3


def test_a_worker_killed_mid_run_costs_no_data(local_ray, threads_run, tmp_path):
    """The Ray worker that sends the 12th request is killed (SIGKILL) as it sends it: Ray restarts it
    and runs its tasks again, the run finishes without the slots it held (its lease lapses), and the
    dataset equals the threads run's."""
    config, threads = threads_run
    killed = []

    def kill_the_sender(number, address):
        if number == 12:
            worker = sender(address).pid
            assert worker != os.getpid()  # a worker, not the driver
            os.kill(worker, signal.SIGKILL)
            killed.append(worker)

    with FaultyServer(delay_s=0.1) as server:
        server.on_chat = kill_the_sender
        report = on_ray(at(config, server), tmp_path / "ray")
    assert killed and not psutil.pid_exists(killed[0])
    assert server.max_in_flight == 2
    assert report.status == "complete" and rows(report).equals(rows(threads))


def test_a_run_that_stops_moving_says_on_what_then_stops(local_ray, threads_run, tmp_path, caplog):
    """The server takes requests and never answers: the run logs what it waits on (its tasks, the Ray
    worker holding the slots, its requests in flight) after orchestration.stall_s, stops with
    RunStalled after stall_timeout_s, and the same run resumes to the threads run's dataset once the
    server answers."""
    config, threads = threads_run
    stalling = RAY.model_copy(update={"stall_s": 3, "stall_timeout_s": 20})
    with FaultyServer() as server:
        config = at(config, server)
        server.on_chat = lambda number, _: number > 1 and server.answering.clear()  # the run's check is answered
        with caplog.at_level(logging.WARNING, logger="germinate"), pytest.raises(RunStalled) as stalled:
            build_dataset(config.model_copy(update={"output_dir": tmp_path, "orchestration": stalling}))
        server.answering.set()
        server.on_chat = None
        # The shards' reports: a busy machine may first report its workers starting, and may not have
        # finished the seeds' empty shard yet.
        reported = [r.getMessage() for r in caplog.records
                    if re.search(r"\(orchestration.stall_s\); waiting on \d tasks \(.*shard-1-aide", r.getMessage())]
        assert len(reported) >= 2
        held = f"Ray worker {os.uname().nodename}:"
        in_flight = [sum(map(int, re.findall(rf"{server.base_url} (\d+) in flight", line))) for line in reported]
        assert 2 in in_flight  # both of the run's slots, held by requests in flight on Ray workers
        said = str(stalled.value)
        assert said.startswith("the run stalled: nothing done for 20s (orchestration.stall_timeout_s); waiting on ")
        assert "shard-1-aide" in said
        assert held in said and said.endswith("what finished is kept: run the same command again to resume")
        assert not (tmp_path / "same" / "dataset").exists()
        report = on_ray(config, tmp_path)
    assert rows(report).equals(rows(threads))


@ray.remote(num_cpus=1)
class OtherJob:
    """Holds a CPU of the cluster."""

    def ready(self) -> None:
        pass


def test_a_run_whose_workers_cannot_start_says_so_then_stops(local_ray, threads_run, tmp_path, caplog):
    """A cluster with no free CPU for one of its shard workers (another job holds it): the run says
    how many workers started, then stops with RunStalled instead of waiting for good. (20 s: on a
    busy machine the first worker takes seconds to start.)"""
    config, _ = threads_run
    other = OtherJob.remote()
    try:
        ray.get(other.ready.remote())
        waiting = RAY.model_copy(update={"stall_s": 1, "stall_timeout_s": 20})
        with FaultyServer() as server, caplog.at_level(logging.WARNING, logger="germinate"), \
                pytest.raises(RunStalled) as stalled:
            build_dataset(at(config, server).model_copy(update={"output_dir": tmp_path, "orchestration": waiting}))
    finally:
        ray.kill(other)
    started = "1 of 2 Ray shard workers started (does the cluster have a free CPU for each?)"
    assert any(r.getMessage().endswith(started) for r in caplog.records)
    assert str(stalled.value).startswith(f"the run stalled: nothing done for 20s (orchestration.stall_timeout_s); "
                                         f"waiting on {started}")


def test_a_servers_slots_go_to_the_workers_that_want_them_equally():
    """What a lease may grow to: an equal share, what the modest leave to the rest, never more than
    the server takes."""
    assert fair_shares(5, {"a": 10, "b": 10}) == {"a": 2, "b": 3}
    assert fair_shares(8, {"a": 1, "b": 10, "c": 10}) == {"a": 1, "b": 3, "c": 4}
    assert fair_shares(7, {"idle": 0, "busy": 2}) == {"idle": 0, "busy": 2}


def test_a_ray_run_without_ray_installed_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed: `import ray` fails
    monkeypatch.delitem(sys.modules, "germinate.flows.ray_run")  # and ray_run is imported again
    monkeypatch.delattr(germinate.flows, "ray_run", raising=False)
    config = tiny_config(write_seeds(tmp_path), tmp_path / "runs", orchestration={"task_runner": "ray"})
    with pytest.raises(UserError, match=r"pip install -e '.\[ray\]'"):
        build_dataset(config)
    assert not (tmp_path / "runs").exists()
