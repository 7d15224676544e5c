"""The run directory: config, seeds, each stage's shards with completion markers, the cache,
the dataset and the report. Starting a run with an existing run id resumes it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import yaml

from germinate.config import RunConfig, data_settings, dump_config
from germinate.errors import UserError
from germinate.io import load_seeds, read_records, write_atomic, write_records, write_table
from germinate.llm import check_llm
from germinate.records import Record, to_dataset_table
from germinate.stats import StageStats, Usage

# Arrow bytes per data file (Parquet with zstd is several times smaller): files the Hub and `datasets`
# stream comfortably, as `push_to_hub`'s default shard size does.
DATASET_SHARD_BYTES = 256 * 2**20
EXPAND_STAGE = "expand"  # the first stage of every run, whatever the strategy


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found


class Run:
    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def open(cls, root: Path) -> Run:
        """An existing run directory named by a user."""
        if not (root / "config.yaml").exists():
            raise UserError(f"{root}: not a germinate run directory (no config.yaml)")
        return cls(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def seeds_path(self) -> Path:
        return self.root / "seeds.parquet"

    @property
    def cache_path(self) -> Path:
        return self.root / "llm_cache.sqlite"

    @property
    def embeddings_path(self) -> Path:
        return self.root / "embeddings.sqlite"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def report_path(self) -> Path:
        return self.root / "report.json"

    def seeds(self) -> list[Record]:
        return read_records(self.seeds_path)

    def _stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def _marker(self, stage: str, index: int) -> Path:
        return self._stage_dir(stage) / f"{index:05d}.done.json"

    def finished_shard(self, stage: str, index: int) -> StageStats | None:
        marker = self._marker(stage, index)
        if not marker.exists():
            return None
        return StageStats.from_dict({**json.loads(marker.read_text()), "resumed": True})

    def run_shard(
        self,
        stage: str,
        index: int,
        records_in: int,
        produce: Callable[[Usage], tuple[list[Record], list[Record]]],
        usage: Usage,
    ) -> StageStats:
        """Run one shard of a stage unless an earlier invocation finished it.

        Kept and rejected records are written first, the marker last: a shard
        without its marker is redone, and its LLM calls come from the cache.
        """
        finished = self.finished_shard(stage, index)
        if finished is not None:
            return finished
        start = time.perf_counter()
        kept, rejected = produce(usage)
        stats = StageStats.of(stage, records_in, kept, rejected, usage, time.perf_counter() - start)
        folder = self._stage_dir(stage)
        write_records(folder / f"kept-{index:05d}.parquet", kept)
        write_records(folder / f"rejected-{index:05d}.parquet", rejected)
        write_atomic(self._marker(stage, index), json.dumps(stats.to_dict()).encode())
        return stats

    @staticmethod
    def _read_all(folder: Path, pattern: str) -> list[Record]:
        return [record for path in sorted(folder.glob(pattern)) for record in read_records(path)]

    def _read(self, stage: str, kind: str) -> list[Record]:
        return self._read_all(self._stage_dir(stage), f"{kind}-*.parquet")

    def kept(self, stage: str) -> list[Record]:
        return self._read(stage, "kept")

    def rejected(self, stage: str) -> list[Record]:
        return self._read(stage, "rejected")

    def dataset(self) -> list[Record]:
        folder = self.dataset_dir / "data"
        if not any(folder.glob("train-*.parquet")):
            raise UserError(f"{self.root}: no dataset (not a germinate run, or it has not finished)")
        return self._read_all(folder, "train-*.parquet")

    def write_dataset(
        self, records: list[Record], files: dict[str, bytes], shard_bytes: int = DATASET_SHARD_BYTES
    ) -> list[Path]:
        """Hugging Face layout: data/train-XXXXX-of-YYYYY.parquet, cut by size, beside the card's
        files (README.md, images/). Built beside the old folder and swapped in: never a mix of two."""
        table = to_dataset_table(records)
        rows_per_file = max(1, len(records) * shard_bytes // max(table.nbytes, 1))
        count = max(1, -(-len(records) // rows_per_file))
        for leftover in self.root.glob(".dataset.*"):  # of a run killed while it swapped folders
            shutil.rmtree(leftover, ignore_errors=True)
        staging = self.root / f".dataset.tmp-{os.getpid()}"
        paths = []
        for i in range(count):
            paths.append(self.dataset_dir / "data" / f"train-{i:05d}-of-{count:05d}.parquet")
            write_table(staging / "data" / paths[-1].name, table.slice(i * rows_per_file, rows_per_file))
        for name, data in files.items():
            write_atomic(staging / name, data)
        replaced = self.root / f".dataset.old-{os.getpid()}"
        if self.dataset_dir.exists():
            self.dataset_dir.rename(replaced)
        staging.rename(self.dataset_dir)
        shutil.rmtree(replaced, ignore_errors=True)
        return paths


def prepare_run(config: RunConfig) -> tuple[RunConfig, Run]:
    """Validate everything a user can get wrong, then create (or reopen) the run directory.

    Nothing is written before the seeds and the LLM settings check out, and a
    new run directory appears whole (it is built beside and renamed).
    """
    # The model and the server's dialect as found: a resume against servers of another model is refused.
    config = config.model_copy(update={"llm": check_llm(config.llm)})
    if config.run_id and (config.output_dir / config.run_id / "config.yaml").exists():
        run = Run(config.output_dir / config.run_id)
        stored = yaml.safe_load(run.config_path.read_text())
        changed = _differences(data_settings(stored), data_settings(config.model_dump(mode="json")))
        if changed:
            raise UserError(
                f"run '{config.run_id}' was started with other settings ({'; '.join(changed[:3])}); "
                "pass the same settings to resume it, or a new --run-id"
            )
        return config, run
    seeds = load_seeds(config.seeds)
    config = config.model_copy(update={"run_id": config.run_id or new_run_id()})
    root = config.output_dir / config.run_id
    if root.exists():
        raise UserError(f"{root}: exists but is not a germinate run (no config.yaml); pick another --run-id")
    staging = config.output_dir / f".{config.run_id}.tmp-{os.getpid()}"
    try:
        staging.mkdir(parents=True)
        write_atomic(staging / "config.yaml", dump_config(config).encode())
        write_records(staging / "seeds.parquet", seeds)
        staging.rename(root)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"output_dir: cannot write {root} ({exc.strerror or exc})") from None
    return config, Run(root)
