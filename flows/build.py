"""The Prefect flow `build_dataset`: stages as tasks over shards. Wiring only."""

from __future__ import annotations

import functools
import json
import operator
import threading
import time
from pathlib import Path
from typing import TypeVar

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from generators import aide, respond
from germinate import progress
from germinate.config import RunConfig
from germinate.io import write_atomic
from germinate.llm import LLM, make_llm
from germinate.report import build_report, dataset_card
from germinate.runs import Run, allocate, prepare_run
from germinate.stats import StageStats, Usage

T = TypeVar("T")

_llms: dict[Path, LLM] = {}
_llms_lock = threading.Lock()


def _llm(config: RunConfig, run: Run) -> LLM:
    """One LLM per run and process, shared by all task threads (one client, one concurrency limit)."""
    with _llms_lock:
        if run.root not in _llms:
            _llms[run.root] = make_llm(config.llm, run.cache_path)
        return _llms[run.root]


def _usage(stage: str) -> Usage:
    return Usage(on_call=lambda: progress.listener.advance(stage))


def _shards(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


@task(name="expand", task_run_name="expand-shard-{index}", cache_policy=NO_CACHE, persist_result=False)
def expand_shard(config: RunConfig, index: int, calls: list[int], rows: list[int]) -> StageStats:
    run = Run(config.output_dir / config.run_id)
    seeds = _shards(run.seeds(), config.shard_size)[index]

    def produce(usage: Usage):
        llm = _llm(config, run)
        personas = aide.relevant_personas(seeds, config.aide.personas)
        generator = aide.AIDE(llm, config.aide, config.generation, personas, config.random_seed)
        allowances = [aide.Allowance(c, r) for c, r in zip(calls, rows)]
        return llm.run(generator.expand(seeds, allowances, config.include_seeds), usage)

    return run.run_shard(aide.STAGE, index, len(seeds), produce, _usage(aide.STAGE))


@task(name="respond", task_run_name="respond-shard-{index}", cache_policy=NO_CACHE, persist_result=False)
def respond_shard(config: RunConfig, index: int) -> StageStats:
    run = Run(config.output_dir / config.run_id)
    records = _shards(run.kept(aide.STAGE), config.shard_size)[index]

    def produce(usage: Usage):
        llm = _llm(config, run)
        return llm.run(respond.respond(llm, records, config.generation, config.random_seed), usage)

    return run.run_shard(respond.STAGE, index, len(records), produce, _usage(respond.STAGE))


def _stage(name: str, total: int, futures) -> StageStats:
    """Wait for a stage's shard tasks; its time is the stage's wall time (shards overlap)."""
    start = time.perf_counter()
    progress.listener.start(name, total)
    merged = functools.reduce(operator.add, [f.result() for f in futures])
    progress.listener.finish(name)
    if not merged.resumed:
        merged.seconds = time.perf_counter() - start
    return merged


@flow(name="build-dataset", task_runner=ThreadPoolTaskRunner(max_workers=4), persist_result=False, log_prints=True)
def build_dataset(config: RunConfig) -> dict:
    """Seeds -> expand (AIDE) -> respond -> Hugging Face dataset folder. Resumes finished shards."""
    start = time.perf_counter()
    config, run = prepare_run(config)
    try:
        seeds = run.seeds()
        # The budget is split per seed, so a shard's share does not depend on how seeds are sharded.
        calls = _shards(allocate(config.budget.max_llm_calls, len(seeds)), config.shard_size)
        rows = _shards(allocate(config.budget.max_records, len(seeds)), config.shard_size)
        expand_stats = _stage(
            aide.STAGE,
            config.budget.max_llm_calls,
            [expand_shard.submit(config, i, c, r) for i, (c, r) in enumerate(zip(calls, rows))],
        )
        expanded = run.kept(aide.STAGE)
        respond_stats = _stage(
            respond.STAGE,
            sum(1 for r in expanded if not r.output),
            [respond_shard.submit(config, i) for i in range(len(_shards(expanded, config.shard_size)))],
        )
        final = run.kept(respond.STAGE)
        stages = [expand_stats, respond_stats]
        report = build_report(config, stages, final, str(run.dataset_dir), time.perf_counter() - start)
        run.write_dataset(final, dataset_card(config, report))
        write_atomic(run.report_path, json.dumps(report, indent=2).encode())
        return report
    finally:
        llm = _llms.pop(run.root, None)
        if llm is not None:
            llm.close()
