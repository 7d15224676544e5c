"""Shard tasks on Ray: a local Ray (ray.init on this machine) builds the same dataset as threads."""

import logging
import shutil
import sys

import pyarrow.parquet as pq
import pytest

from conftest import GATE_OFF, tiny_config
from flows.build import build_dataset
from germinate.config import OrchestrationConfig
from germinate.errors import UserError
from servers import FaultyServer
from test_pipeline import write_seeds


def test_ray_gives_the_threads_result_for_the_same_cache(tmp_path, caplog):
    """The threads run, then the same run moved to another directory without its stage outputs
    and resumed on Ray: every request comes from the cache it brought, and the dataset is equal."""
    with FaultyServer() as server:
        config = tiny_config(
            write_seeds(tmp_path), tmp_path / "threads", llm={"backend": "openai", "base_url": server.base_url},
            aide__personas=0, quality=GATE_OFF, run_id="same", shard_size=2,
        )
        threads = build_dataset(config)
        answered = server.requests
        shutil.copytree(tmp_path / "threads" / "same", tmp_path / "ray" / "same",
                        ignore=shutil.ignore_patterns("stages", "shards", "dataset", "report.json"))
        with caplog.at_level(logging.INFO, logger="prefect"):
            on_ray = build_dataset(config.model_copy(update={
                "output_dir": tmp_path / "ray", "orchestration": OrchestrationConfig(task_runner="ray"),
            }))
    said = [r.getMessage() for r in caplog.records]
    assert "Creating a local Ray instance" in said and "Using Ray cluster with 1 nodes." in said  # ran on Ray
    assert server.requests == answered + 1  # nothing asked twice, besides the run's one-token start-up check
    for stage in on_ray["stages"]:
        assert stage["cached_calls"] == stage["llm_calls"] and not stage["resumed"]
    assert on_ray["rows"] == threads["rows"] > 3
    ray_rows = pq.read_table(tmp_path / "ray" / "same" / "dataset" / "data")
    assert ray_rows.equals(pq.read_table(tmp_path / "threads" / "same" / "dataset" / "data"))


def test_a_ray_run_without_ray_installed_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # as if the extra were not installed
    config = tiny_config(write_seeds(tmp_path), tmp_path / "runs", orchestration={"task_runner": "ray"})
    with pytest.raises(UserError, match=r"pip install -e '.\[ray\]'"):
        build_dataset(config)
    assert not (tmp_path / "runs").exists()
