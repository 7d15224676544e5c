"""The run directory: config, seeds, each stage's shards with completion markers, the cache,
the dataset and the report. Starting a run with an existing run id resumes it."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import secrets
import shutil
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import yaml
from pydantic import TypeAdapter, ValidationError

from germinate.budget import EXPAND_STAGE
from germinate.config import RENAMED_STAGES, RunConfig, data_settings, dump_config, with_new_names
from germinate.errors import UserError
from germinate.export import preference_table
from germinate.io import load_seeds, read_records, write_atomic, write_records, write_table
from germinate.llm import check_llm
from germinate.records import Record, to_dataset_table
from germinate.stats import StageStats

# Arrow bytes per data file (Parquet with zstd is several times smaller): files the Hub and `datasets`
# stream comfortably, as `push_to_hub`'s default shard size does.
DATASET_SHARD_BYTES = 256 * 2**20
# A shard's marker holds its stages' numbers; a whole-set stage's, its own.
SHARD_STATS = TypeAdapter(list[StageStats])
STAGE_STATS = TypeAdapter(StageStats)
_locks: dict[Path, list[int]] = {}  # run root -> [lock file descriptor, holders in this process]
_locks_guard = threading.Lock()


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

    def _shard_marker(self, index: int) -> Path:
        return self.root / "shards" / f"{index:05d}.done.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[Run]:
        """Held while a process writes the run, so a second one with the same run id stops at once.
        An OS lock (flock): it goes with a killed process and never blocks the resume. Re-entrant
        within a process (the CLI takes it before the flow does)."""
        key = self.root.resolve()
        with _locks_guard:
            if key in _locks:
                _locks[key][1] += 1
            else:
                fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise UserError(
                        f"run '{self.root.name}' is being written by {holder}; wait for it to end, "
                        "or pick another --run-id"
                    ) from None
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
                    self._clear_unfinished()
                except BaseException:
                    os.close(fd)  # and with it the lock
                    raise
                _locks[key] = [fd, 1]
        try:
            yield self
        finally:
            with _locks_guard:
                _locks[key][1] -= 1
                if not _locks[key][1]:
                    os.close(_locks.pop(key)[0])

    def _clear_unfinished(self) -> None:
        """What a killed or failed invocation left behind: temporary files of its writers, and shard
        outputs without their marker (they are redone, and how many shards there are may change)."""
        for leftover in [*self.root.rglob(".*.tmp-*"), *self.root.glob(".dataset.old-*")]:
            pid = leftover.name.rsplit("-", 1)[1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        for output in [*self.root.glob("stages/*/*-*.parquet"), *self.root.glob("shards/*-*.parquet")]:
            index = output.stem.rsplit("-", 1)[1]
            if index.isdigit() and not self._shard_marker(int(index)).exists():
                output.unlink()

    # A shard streams its records through every per-record stage: the source's records go to
    # stages/expand/kept-N, each stage's drops to stages/<stage>/rejected-N, what came through to
    # shards/kept-N, and the marker, last, to shards/N.done.json with every stage's numbers.

    def finished_shard(self, index: int) -> list[StageStats] | None:
        marker = self._shard_marker(index)
        if not marker.exists():
            return None
        return [dataclasses.replace(stats, resumed=True) for stats in SHARD_STATS.validate_json(marker.read_bytes())]

    def write_shard(
        self, index: int, made: list[Record], kept: list[Record], rejected: dict[str, list[Record]],
        stats: list[StageStats], sealed: bool,
    ) -> list[StageStats]:
        """A shard some of whose requests went unanswered is written unsealed (no marker): the next
        stage reads it, and a rerun redoes it, asking those requests again and the rest of the cache."""
        write_records(self._stage_dir(EXPAND_STAGE) / f"kept-{index:05d}.parquet", made)
        for stage, dropped in rejected.items():
            write_records(self._stage_dir(stage) / f"rejected-{index:05d}.parquet", dropped)
        write_records(self.root / "shards" / f"kept-{index:05d}.parquet", kept)
        if sealed:
            write_atomic(self._shard_marker(index), SHARD_STATS.dump_json(stats))
        else:
            for stage in stats:
                stage.unsealed = 1
        return stats

    def survivors(self) -> list[Record]:
        """The records every shard let through all per-record stages, in shard order."""
        return self._read_all(self.root / "shards", "kept-*.parquet")

    # A whole-set stage writes stages/<stage>/kept.parquet, rejected.parquet, then done.json.

    def finished_stage(self, stage: str) -> StageStats | None:
        marker = self._stage_dir(stage) / "done.json"
        if not marker.exists():
            return None
        return dataclasses.replace(STAGE_STATS.validate_json(marker.read_bytes()), resumed=True)

    def write_stage(
        self, stage: str, kept: list[Record], rejected: list[Record], stats: StageStats, sealed: bool
    ) -> StageStats:
        folder = self._stage_dir(stage)
        write_records(folder / "kept.parquet", kept)
        write_records(folder / "rejected.parquet", rejected)
        if sealed:
            write_atomic(folder / "done.json", STAGE_STATS.dump_json(stats))
        else:
            stats.unsealed = 1
        return stats

    @staticmethod
    def _read_all(folder: Path, pattern: str) -> list[Record]:
        return [record for path in sorted(folder.glob(pattern)) for record in read_records(path)]

    def kept(self, stage: str) -> list[Record]:
        """What a stage kept: the expansion's records, or a whole-set stage's."""
        return self._read_all(self._stage_dir(stage), "kept*.parquet")

    def rejected(self, stage: str) -> list[Record]:
        return self._read_all(self._stage_dir(stage), "rejected*.parquet")

    def dataset(self) -> list[Record]:
        folder = self.dataset_dir / "data"
        if not any(folder.glob("train-*.parquet")):
            raise UserError(f"{self.root}: no dataset (not a germinate run, or it has not finished)")
        return self._read_all(folder, "train-*.parquet")

    def drop_dataset(self) -> None:
        """A run that failed for its data has no dataset: not even an earlier, partial one."""
        if self.dataset_dir.exists():
            self.dataset_dir.rename(stale := self.root / f".dataset.old-{os.getpid()}")
            shutil.rmtree(stale)

    def write_dataset(
        self, records: list[Record], files: dict[str, bytes], shard_bytes: int = DATASET_SHARD_BYTES
    ) -> list[Path]:
        """Hugging Face layout: data/train-XXXXX-of-YYYYY.parquet, cut by size, beside the card's
        files (README.md, images/) and the preference pairs (preference/). Built beside the old folder
        and swapped in: never a mix of two."""
        table = to_dataset_table(records)
        rows_per_file = max(1, len(records) * shard_bytes // max(table.nbytes, 1))
        count = max(1, -(-len(records) // rows_per_file))
        staging = self.root / f".dataset.tmp-{os.getpid()}"
        paths = []
        for i in range(count):
            paths.append(self.dataset_dir / "data" / f"train-{i:05d}-of-{count:05d}.parquet")
            write_table(staging / "data" / paths[-1].name, table.slice(i * rows_per_file, rows_per_file))
        pairs = preference_table(records)
        if pairs.num_rows:  # the card's `preference` config, in a folder of its own: data/ holds the rows alone
            paths.append(self.dataset_dir / "preference" / "train-00000-of-00001.parquet")
            write_table(staging / "preference" / paths[-1].name, pairs)
        for name, data in files.items():
            write_atomic(staging / name, data)
        replaced = self.root / f".dataset.old-{os.getpid()}"
        if self.dataset_dir.exists():
            self.dataset_dir.rename(replaced)
        staging.rename(self.dataset_dir)
        shutil.rmtree(replaced, ignore_errors=True)
        return paths


def _new_names(run: Run, stored: dict) -> dict:
    """A run started before a stage was renamed, moved to the new names so that it resumes: its
    finished shards' numbers, its stage folders, then (last, so that a move killed midway is done
    again) its config. The drops it kept still name the old stage."""
    renamed = with_new_names(stored, warn=False)
    if renamed == stored:
        return stored
    with run.locked():
        for marker in (run.root / "shards").glob("*.done.json"):
            stats = SHARD_STATS.validate_json(marker.read_bytes())
            for stage in stats:
                stage.stage = RENAMED_STAGES.get(stage.stage, stage.stage)
            write_atomic(marker, SHARD_STATS.dump_json(stats))
        for old, new in RENAMED_STAGES.items():
            if run._stage_dir(old).exists():
                run._stage_dir(old).rename(run._stage_dir(new))
        write_atomic(run.config_path, yaml.safe_dump(renamed, sort_keys=False).encode())
    return renamed


def _as_now(stored: dict) -> dict:
    """A stored config as this version reads it: a setting added since takes its default, which does
    what the version that wrote it did. One this version refuses is compared as it is."""
    try:
        return RunConfig.model_validate(stored).model_dump(mode="json")
    except ValidationError:
        return stored


def _reopen(config: RunConfig) -> tuple[RunConfig, Run]:
    """An existing run, resumed with the settings it was started with (where they shape the data)."""
    run = Run(config.output_dir / config.run_id)
    stored = _as_now(_new_names(run, yaml.safe_load(run.config_path.read_text())))
    changed = _differences(data_settings(stored), data_settings(config.model_dump(mode="json")))
    if changed:
        raise UserError(
            f"run '{config.run_id}' was started with other settings ({'; '.join(changed[:3])}); "
            "pass the same settings to resume it, or a new --run-id"
        )
    return config, run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_run(config: RunConfig) -> tuple[RunConfig, Run]:
    """Validate everything a user can get wrong, then create (or reopen) the run directory.

    Nothing is written before the seeds and the LLM settings check out, and a
    new run directory appears whole (it is built beside and renamed).
    """
    # The model and the server's dialect as found: a resume against servers of another model is refused.
    config = config.model_copy(update={"llm": check_llm(config.llm)})
    if config.run_id and (config.output_dir / config.run_id / "config.yaml").exists():
        return _reopen(config)
    seeds = load_seeds(config.seeds)
    config = config.model_copy(update={"run_id": config.run_id or new_run_id()})
    root = config.output_dir / config.run_id
    if root.exists():
        raise UserError(f"{root}: exists but is not a germinate run (no config.yaml); pick another --run-id")
    for leftover in config.output_dir.glob(f".{config.run_id}.tmp-*"):  # a creation killed midway
        if not _alive(int(leftover.name.rsplit("-", 1)[1])):
            shutil.rmtree(leftover, ignore_errors=True)
    staging = config.output_dir / f".{config.run_id}.tmp-{os.getpid()}"
    try:
        staging.mkdir(parents=True)
        write_atomic(staging / "config.yaml", dump_config(config).encode())
        write_records(staging / "seeds.parquet", seeds)
        staging.rename(root)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if (root / "config.yaml").exists():  # another process created the same run id a moment before
            return _reopen(config)
        raise UserError(f"output_dir: cannot write {root} ({exc.strerror or exc})") from None
    return config, Run(root)
