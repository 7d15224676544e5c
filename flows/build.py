"""The Prefect flow `build_dataset`: stages as tasks over shards. Wiring only.

No `from __future__ import annotations` here: Prefect builds the flow's parameter model (the UI's
form, a deployment's validation) from the annotations, and needs them as types, not strings."""

import functools
import json
import math
import operator
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from filters import dedup, heuristics, reflection, select
from flows.artifacts import StageProgress, report_artifacts
from generators import STAGE as EXPAND, check_strategies, make_strategy, respond
from germinate import progress
from germinate.budget import Allowance, admit_seeds, allocate, apportion, record_cost
from germinate.card import dataset_card, plots
from germinate.config import RunConfig
from germinate.embed import embed
from germinate.errors import RunFailed, UserError
from germinate.hub import check_token, publish
from germinate.io import write_atomic
from germinate.llm import LLM, make_llm
from germinate.metrics import run_metrics
from germinate.records import Record, show
from germinate.report import build_report, not_written, shortfall
from germinate.runs import Run, prepare_run
from germinate.stats import StageStats, Usage

# The quality gate, in order; each name is also its switch in config.quality.
GATE = (heuristics.STAGE, dedup.EXACT, dedup.NEAR, dedup.SEMANTIC, reflection.STAGE, select.STAGE)
LLM_STAGES = (EXPAND, respond.STAGE, reflection.STAGE)
PROGRESS_INTERVAL_S = 2.0  # how often a stage's progress artifact is updated

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
    return Usage(on_call=lambda: progress.advance(stage))


def _transient(task, task_run, state) -> bool:
    """Retry a shard task unless the user must fix something first (a bad file, a bad setting)."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


def _retrying(shard_task, config: RunConfig):
    """An LLM stage's shard task with the run's retries: exponential backoff with jitter."""
    retries = config.orchestration
    return shard_task.with_options(
        retries=retries.task_retries,
        retry_delay_seconds=[retries.retry_delay_s * 2**i for i in range(retries.task_retries)],
        retry_jitter_factor=0.5,
        retry_condition_fn=_transient,
    )


def _task_runner(config: RunConfig) -> TaskRunner:
    """Chosen per run, inside the flow, so a deployment or a served flow runs where its config says."""
    if config.orchestration.task_runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise UserError("orchestration.task_runner: ray needs the ray extra (pip install -e '.[ray]')") from None
        return RayTaskRunner(address=config.orchestration.ray_address)
    return ThreadPoolTaskRunner(max_workers=config.orchestration.workers)


def _shards(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


@task(name="expand", task_run_name="expand-{strategy}-{shard}", cache_policy=NO_CACHE, persist_result=False)
def expand_shard(
    config: RunConfig, strategy: str, index: int, shard: int, strategy_calls: int, strategy_rows: int,
    calls: list[int], rows: list[int],
) -> StageStats:
    """One shard of a strategy's units; `index` numbers the expand stage's shards across strategies."""
    run = Run(config.output_dir / config.run_id)

    def produce(usage: Usage):
        llm = _llm(config, run)
        generator = make_strategy(strategy, llm, config, record_cost(config))
        units = _shards(list(generator.units(run.seeds(), strategy_calls, strategy_rows)), config.shard_size)[shard]
        allowances = [Allowance(c, r) for c, r in zip(calls, rows)]
        return llm.run(generator.expand(units, allowances), usage)

    return run.run_shard(EXPAND, index, len(calls), produce, _usage(EXPAND))


@task(name="respond", task_run_name="respond-shard-{index}", cache_policy=NO_CACHE, persist_result=False)
def respond_shard(config: RunConfig, index: int, sealed_input: bool) -> StageStats:
    run = Run(config.output_dir / config.run_id)
    records = _shards(run.kept(EXPAND), config.shard_size)[index]

    def produce(usage: Usage):
        llm = _llm(config, run)
        return llm.run(respond.respond(llm, records, config.generation, config.random_seed), usage)

    return run.run_shard(respond.STAGE, index, len(records), produce, _usage(respond.STAGE), sealed_input)


@task(name="reflect", task_run_name="reflect-shard-{index}", cache_policy=NO_CACHE, persist_result=False)
def reflect_shard(config: RunConfig, index: int, source: str, calls: int, sealed_input: bool) -> StageStats:
    """Judge the answers of one shard; `calls` is the shard's share of the budget left for revisions."""
    run = Run(config.output_dir / config.run_id)
    records = _shards(run.kept(source), config.shard_size)[index]

    def produce(usage: Usage):
        llm = _llm(config, run)
        revisions = Allowance(calls, 0)
        checks = heuristics.Heuristics(config.quality.heuristics) if config.quality.heuristics.enabled else None
        judged = reflection.judge_responses(
            llm, records, config.quality.reflect, config.generation, revisions.take,
            acceptable=lambda r: checks is None or checks.check(r) is None,
        )
        return llm.run(judged, usage)

    return run.run_shard(reflection.STAGE, index, len(records), produce, _usage(reflection.STAGE), sealed_input)


def _filters(config: RunConfig, run: Run) -> dict[str, Callable[[list[Record]], tuple[list[Record], list[Record]]]]:
    quality = config.quality

    def vectors(records: list[Record]):
        return embed([show(r) for r in records], config.embedding.model, config.embedding.batch_size, run.embeddings_path)

    return {
        heuristics.STAGE: heuristics.Heuristics(quality.heuristics),
        dedup.EXACT: dedup.exact_dedup,
        dedup.NEAR: lambda rs: dedup.near_dedup(rs, quality.near_dedup),
        dedup.SEMANTIC: lambda rs: dedup.semantic_dedup(rs, vectors(rs), quality.semantic_dedup, config.random_seed),
        select.STAGE: lambda rs: select.select_diverse(
            rs, vectors(rs), config.budget.max_records, quality.select, config.random_seed
        ),
    }


@task(name="filter", task_run_name="{stage}", cache_policy=NO_CACHE, persist_result=False)
def filter_stage(config: RunConfig, stage: str, source: str, sealed_input: bool) -> StageStats:
    """A stage that needs every record at once (dedup compares all of them): one shard."""
    run = Run(config.output_dir / config.run_id)
    records = run.kept(source)

    def produce(usage: Usage):
        result = _filters(config, run)[stage](records)
        progress.advance(stage, len(records))
        return result

    return run.run_shard(stage, 0, len(records), produce, Usage(), sealed_input)


def _expand(config: RunConfig, run: Run, runner: TaskRunner) -> tuple[StageStats, dict[str, dict]]:
    """Seeds are paid for first; what is left is split by the strategies' shares, then over each
    strategy's units (seeds, disciplines) so a shard's share does not depend on the sharding."""
    seeds = run.seeds()
    # With selection on, expansion grows a pool larger than the dataset to choose from.
    pool = config.quality.select.pool if config.quality.select.enabled else 1.0
    budget = Allowance(config.budget.max_llm_calls, math.ceil(config.budget.max_records * pool))
    admitted = admit_seeds(seeds, budget, record_cost(config)) if config.include_seeds else ([], [])
    seed_stats = run.run_shard(EXPAND, 0, len(seeds), lambda usage: admitted, Usage())
    calls, rows = apportion(budget.calls, config.shares), apportion(budget.records, config.shares)
    submitted: dict[str, list] = {}

    def submit() -> list:
        expand = _retrying(expand_shard, config)
        index = 1
        for name in config.strategies:
            units = make_strategy(name, None, config, record_cost(config)).units(seeds, calls[name], rows[name])
            if not units:
                continue
            unit_calls = _shards(allocate(calls[name], len(units)), config.shard_size)
            unit_rows = _shards(allocate(rows[name], len(units)), config.shard_size)
            submitted[name] = []
            for shard, (c, r) in enumerate(zip(unit_calls, unit_rows)):
                parameters = dict(config=config, strategy=name, index=index, shard=shard,
                                  strategy_calls=calls[name], strategy_rows=rows[name], calls=c, rows=r)
                submitted[name].append(runner.submit(expand, parameters))
                index += 1
        return [f for fs in submitted.values() for f in fs]

    merged = _stage(EXPAND, config.budget.max_llm_calls, submit, seed_stats)
    strategies = {}
    for name, share in config.shares.items():
        stats = functools.reduce(operator.add, [f.result() for f in submitted.get(name, [])], StageStats(EXPAND))
        strategies[name] = {
            "share": round(share, 4), "max_llm_calls": calls[name], "max_records": rows[name],
            "expand_calls": stats.llm_calls, "records": stats.kept,
        }
    return merged, strategies


def _stage(name: str, total: int, submit: Callable[[], list], *done: StageStats) -> StageStats:
    """Submit a stage's shard tasks and wait for them; its time is the stage's wall time (shards
    overlap). An LLM stage's progress artifact advances while it waits."""
    start = time.perf_counter()
    progress.start(name, total)  # before the shards start counting
    futures = submit()
    shown = StageProgress(name, total) if name in LLM_STAGES and futures else None
    for future in futures:  # one future at a time: each wait leaves a callback on what it waits for
        while not wait([future], timeout=PROGRESS_INTERVAL_S).done:
            if shown:
                shown.update()
    if shown:
        shown.update(final=True)
    merged = functools.reduce(operator.add, [*done, *(f.result() for f in futures)])
    progress.finish(name)
    if not merged.resumed:
        merged.seconds = time.perf_counter() - start
    return merged


def _build(config: RunConfig, run: Run, runner: TaskRunner, start: float) -> tuple[dict, list[Record]]:
    """The stages in order, their shard tasks on `runner`; writes the dataset and the report."""
    expand_stats, strategies = _expand(config, run, runner)
    expanded = run.kept(EXPAND)
    answer, judge = _retrying(respond_shard, config), _retrying(reflect_shard, config)
    sealed = expand_stats.unsealed == 0  # a stage whose input is open stays open too: a rerun redoes it
    respond_stats = _stage(
        respond.STAGE,
        sum(1 for r in expanded if not r.output),
        lambda: [runner.submit(answer, {"config": config, "index": i, "sealed_input": sealed})
                 for i in range(len(_shards(expanded, config.shard_size)))],
    )
    stages = [expand_stats, respond_stats]
    source = respond.STAGE
    for stage in GATE:
        if not getattr(config.quality, stage).enabled:
            continue
        records = stages[-1].kept  # the records this stage reads: no need to read them here too
        common = {"config": config, "source": source, "sealed_input": stages[-1].unsealed == 0}
        if stage == reflection.STAGE:
            # First judgements were paid for at expansion; revisions get what is left.
            spent = sum(s.llm_calls for s in stages) + records
            count = len(_shards(range(records), config.shard_size))
            shares = allocate(max(0, config.budget.max_llm_calls - spent), count)
            parameters = [{**common, "index": i, "calls": c} for i, c in enumerate(shares)]
            shard_task = judge
        else:
            parameters, shard_task = [{**common, "stage": stage}], filter_stage
        stages.append(_stage(stage, records, lambda: [runner.submit(shard_task, p) for p in parameters]))
        source = stage
    final = run.kept(source)
    problem = shortfall(config, stages, final)
    if problem and not config.budget.allow_partial:
        report = build_report(config, stages, strategies, len(run.seeds()), final, None, None,
                              time.perf_counter() - start, problem)
        write_atomic(run.report_path, json.dumps(report, indent=2).encode())
        raise RunFailed(not_written(problem, stages))
    metrics = run_metrics(run, final, config.embedding.model)
    report = build_report(
        config, stages, strategies, len(run.seeds()), final, metrics, str(run.dataset_dir),
        time.perf_counter() - start, problem,
    )
    images = plots(final)
    run.write_dataset(final, {"README.md": dataset_card(config, report, list(images)).encode(), **images})
    write_atomic(run.report_path, json.dumps(report, indent=2).encode())
    if config.hub.repo_id:  # after the report: a failed upload loses nothing, and a rerun retries it
        report["published"] = publish(run, config.hub.repo_id, config.hub.private, config.hub.revision)
        write_atomic(run.report_path, json.dumps(report, indent=2).encode())
    return report, final


def check_run(config: RunConfig) -> None:
    """What a user can get wrong beyond the config's own checks, found before anything is written."""
    check_strategies(config)
    _task_runner(config)
    if config.hub.repo_id:
        check_token()


@flow(name="build-dataset", persist_result=False, log_prints=True)
def build_dataset(config: RunConfig) -> dict:
    """Seeds -> expand (the configured strategies) -> respond -> quality gate -> Hugging Face dataset folder.
    Resumes finished shards."""
    start = time.perf_counter()
    check_run(config)
    # Shard tasks may run in other processes (Ray): they get the run directory as an absolute path.
    config, run = prepare_run(config.model_copy(update={"output_dir": config.output_dir.resolve()}))
    try:
        with run.locked(), _task_runner(config) as runner:
            report, final = _build(config, run, runner, start)
        report_artifacts(report, final)
        return report
    finally:
        llm = _llms.pop(run.root, None)
        if llm is not None:
            llm.close()
