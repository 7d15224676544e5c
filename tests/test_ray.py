"""Shard tasks on Ray: a local Ray (ray.init on this machine) builds the same dataset as threads, the
run's request limit holds across its workers, and their progress reaches the driver."""

import logging
import sys

import pyarrow.parquet as pq
import pytest
from test_pipeline import write_seeds

from conftest import GATE_OFF, tiny_config
from germinate import progress
from germinate.errors import UserError
from germinate.flows.build import build_dataset
from germinate.flows.pipeline import CALLS
from germinate.settings import OrchestrationConfig
from servers import FaultyServer


def test_ray_gives_the_threads_result_within_one_request_limit(tmp_path, caplog):
    """The same run on threads, then on a local Ray with a shard per seed: the same dataset, at most
    `llm.concurrency` requests in flight at the server although several workers send them, and every
    request counted in the driver's progress."""
    with FaultyServer(delay_s=0.1) as server:
        config = tiny_config(
            write_seeds(tmp_path), tmp_path / "threads", llm={"backend": "openai", "base_url": server.base_url,
                                                              "concurrency": 2},
            aide__personas=0, quality=GATE_OFF, run_id="same", shard_size=1,
        )
        threads = build_dataset(config)
        server.max_in_flight = 0
        with caplog.at_level(logging.INFO, logger="prefect"):
            on_ray = build_dataset(config.model_copy(update={
                "output_dir": tmp_path / "ray", "orchestration": OrchestrationConfig(task_runner="ray"),
            }))
    said = [r.getMessage() for r in caplog.records]
    assert "Creating a local Ray instance" in said and "Using Ray cluster with 1 nodes." in said  # ran on Ray
    assert server.max_in_flight == 2  # each worker alone would have taken 2
    assert progress.done(CALLS) == on_ray.llm_calls == threads.llm_calls
    assert on_ray.rows == threads.rows > 3
    ray_rows = pq.read_table(tmp_path / "ray" / "same" / "dataset" / "data")
    assert ray_rows.equals(pq.read_table(tmp_path / "threads" / "same" / "dataset" / "data"))


def test_a_ray_run_without_ray_installed_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # as if the extra were not installed
    config = tiny_config(write_seeds(tmp_path), tmp_path / "runs", orchestration={"task_runner": "ray"})
    with pytest.raises(UserError, match=r"pip install -e '.\[ray\]'"):
        build_dataset(config)
    assert not (tmp_path / "runs").exists()
