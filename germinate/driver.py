"""A run, driven from one process: stages found by name, shards planned once and handed to a runner
(threads here; Ray workers in flows/ray_run.py; Prefect task runs in flows/build.py), then the
whole-set stages, the report and the dataset. It names no stage, and imports neither Prefect nor Ray.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import operator
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol

from germinate import generators, progress
from germinate.budget import EXPAND_STAGE, SEEDS, ShardWork, plan
from germinate.card import dataset_card, plots, warm_plots
from germinate.config import RunConfig, known_stages
from germinate.embed import Embedder, warm
from germinate.errors import RunFailed, UserError
from germinate.executor import Seeds, run_whole_set, stream_shard
from germinate.hub import check_token, publish
from germinate.llm import LLM, make_llm
from germinate.forecast import kept_forecast
from germinate.llm.cap import TokenCap
from germinate.llm.limit import Limit
from germinate.metrics import run_metrics, wanted_ahead
from germinate.records import Record
from germinate.report import (
    Report, StrategyReport, build_report, not_written, run_line, short_of_rows, shortfall, stage_line,
)
from germinate.runs import Run, prepare_run
from germinate.stage import Context, Stage
from germinate.stall import Watch
from germinate.stats import StageStats

CALLS = "LLM calls"  # the progress of the whole run against its budget
WATCH_S = 2.0  # how often the driver looks up from a task it waits for
log = logging.getLogger(__name__)

_llms: dict[tuple[Path, Host | None], LLM] = {}
_llms_lock = threading.Lock()


class Host(Protocol):
    """Where shard tasks run outside the driver, in a process of their own (a Ray worker): the run's
    request slots shared with the other processes, and the driver told what its shards make."""

    def limit(self, server: str) -> Limit:
        """A server's limit in this process: its share of the run's."""

    def made(self, records: list[Record], size: int, every: bool) -> None:
        """Records a shard made (of a set of about `size`), for the driver to embed: `every` one, or
        the metrics' sample."""

    def settle(self) -> None:
        """At the end of a task: its last counts reach the driver before the driver hears it is done."""


def llm_for(config: RunConfig, run: Run, host: Host | None = None) -> LLM:
    """One LLM per run and process (one client, one limit), shared by every shard task in it; on a
    `host`, each server's limit is the host's share of the run's."""
    with _llms_lock:
        if (run.root, host) not in _llms:
            _llms[run.root, host] = make_llm(config.llm, run.cache_path, host.limit if host else None)
        return _llms[run.root, host]


def embedder_for(config: RunConfig, run: Run) -> Embedder:
    """The run's vectors, cached in its directory, from this process's embedding worker (it starts on the
    first ask; `prepare` warms it in the driver)."""
    return Embedder(config.embedding, run.embeddings_path)


def close_llm(run: Run, failed: bool = False) -> None:
    with _llms_lock:
        llm = _llms.pop((run.root, None), None)
    if llm is not None:
        if failed:
            llm.abort()
        llm.close()


def stage_classes(config: RunConfig) -> tuple[list[type[Stage]], list[type[Stage]]]:
    """The config's stages, switched on, in its order: (per-record, whole-set)."""
    known = known_stages()
    chosen = []
    for name in config.stages:
        if name not in known:
            raise UserError(f"stages: no stage '{name}' (known: {', '.join(sorted(known))})")
        if known[name].enabled(config):
            chosen.append(known[name])
    per_record = [cls for cls in chosen if not cls.whole_set]
    whole_set = [cls for cls in chosen if cls.whole_set]
    if chosen != per_record + whole_set:
        late = next(cls.name for cls in chosen[len(per_record):] if not cls.whole_set)
        raise UserError(f"stages: '{late}' works record by record; put it before the stages that compare the "
                        f"whole set ({', '.join(cls.name for cls in whole_set)})")
    with_last_look = [cls for cls in per_record if cls.has_last_look()]
    if with_last_look and per_record[-1] is not with_last_look[-1] or len(with_last_look) > 1:
        raise UserError(f"stages: '{with_last_look[0].name}' takes a last look at the end of each shard; "
                        "it must be the last stage that works record by record")
    return per_record, whole_set


def calls_after(config: RunConfig) -> Callable[[bool], int]:
    """The LLM calls the run's per-record stages make for a record (by whether it came with its
    answer): its maker reserves them."""
    per_record = stage_classes(config)[0]
    return lambda answered: sum(stage.calls_for(config, answered) for stage in per_record)


def record_cost(config: RunConfig) -> int:
    """What a strategy reserves for each record it makes without an answer: the answers the respond
    stage samples and what the per-record stages do with them, or the strategy's own answer (as
    Evol-Instruct answers while it expands) and what they do with an answered record."""
    return max(calls_after(config)(False), 1 + calls_after(config)(True))


def embed_ahead(embedder: Embedder, records: list[Record], size: int, every: bool) -> None:
    """Records of a set of about `size` (the seeds, the rows the shards make) are embedded while the
    run goes on, the metrics' samples of every set first; only those samples unless a stage compares
    `every` record's vector."""
    for priority, text in wanted_ahead(records, size, every):
        embedder.submit([text], priority)


def compares_vectors(config: RunConfig) -> bool:
    """Whether a whole-set stage of the run reads every record's vector."""
    return any(cls.compares_vectors for cls in stage_classes(config)[1])


def run_shard(config: RunConfig, work: ShardWork, host: Host | None = None) -> list[StageStats]:
    """One shard, streamed through every per-record stage, unless an earlier invocation finished it;
    in the driver, or on a `host`."""
    run = Run(config.output_dir / config.run_id)
    finished = run.finished_shard(work.index)
    if finished is not None:
        return finished
    llm, embedder = llm_for(config, run, host), embedder_for(config, run)
    context = Context(config, llm, embedder.vectors)
    stages = [cls(context) for cls in stage_classes(config)[0]]
    source = Seeds() if work.source == SEEDS else generators.strategies()[work.source](context, record_cost(config))
    allowances = [dataclasses.replace(a) for a in work.allowances]  # a retried task starts from the plan again
    # What the shard makes is embedded while the run goes on: here, or in the driver (which runs the
    # whole-set stages and the metrics) when on a host, which then loads no model unless a strategy
    # asks it for vectors.
    made = host.made if host else functools.partial(embed_ahead, embedder)
    # The shard's part of the run's token and dollar caps: its part of the run's LLM calls.
    cap = TokenCap(config.budget, sum(a.calls for a in work.allowances) / config.budget.max_llm_calls) \
        if config.budget.capped else None
    output = llm.run(stream_shard(
        source, work.units, allowances, stages, prime=work.prime, on_call=lambda stage: progress.advance(CALLS),
        on_record=progress.advance,
        on_made=functools.partial(made, size=config.budget.max_records, every=compares_vectors(config)),
    ), cap=cap)
    sealed = not any(s.unanswered_calls for s in output.stats)
    if host:
        host.settle()
    return run.write_shard(work.index, output.made, output.kept, output.rejected, output.stats, sealed)


def run_stage(config: RunConfig, stage: str, source: str | None, sealed_input: bool) -> StageStats:
    """A whole-set stage, on what the previous one kept (`source`; None: what the shards let through).
    It runs in the driver, whatever the runner: the run's vectors are embedded there."""
    run = Run(config.output_dir / config.run_id)
    finished = run.finished_stage(stage)
    if finished is not None:
        return finished
    records = run.kept(source) if source else run.survivors()
    cls = {cls.name: cls for cls in stage_classes(config)[1]}[stage]
    llm = llm_for(config, run) if cls.calls_llm else None
    found = cls(Context(config, llm, embedder_for(config, run).vectors))
    whole = run_whole_set(found, records)
    (kept, rejected), stats = llm.run(whole) if llm else asyncio.run(whole)
    return run.write_stage(stage, kept, rejected, stats, sealed_input and not stats.unanswered_calls)


class Runner(Protocol):
    """Where shard tasks run: `submit` one, `wait` for it (showing progress meanwhile)."""

    def submit(self, name: str, task: Callable[..., Any], **parameters: Any) -> Any: ...

    def wait(self, future: Any, timeout: float) -> bool:
        """Whether the task finished within `timeout` seconds."""

    def done(self, future: Any) -> bool:
        """Whether the task finished, without waiting."""

    def describe(self) -> str:
        """What the runner's workers hold, for a run that waits too long ('' when nothing to add)."""


class Threads:
    """Shard tasks on threads of this process, all sharing its one LLM client and limit."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.pool = ThreadPoolExecutor(max_workers=config.orchestration.workers, thread_name_prefix="germinate-shard")

    def submit(self, name: str, task: Callable[..., Any], **parameters: Any) -> Future:
        return self.pool.submit(task, **parameters)

    def wait(self, future: Future, timeout: float) -> bool:
        return bool(wait([future], timeout).done)

    def done(self, future: Future) -> bool:
        return future.done()

    def describe(self) -> str:
        return ""

    def __enter__(self) -> Threads:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # A failed or stalled run does not wait for its tasks: its LLM was aborted, so they end soon.
        self.pool.shutdown(wait=exc_type is None, cancel_futures=True)


def _wait_watched(runner: Runner, tasks: dict[str, Any], run: Run, config: RunConfig) -> None:
    """Every task, in turn; a run in which nothing moves for a while says what it waits on, then stops."""

    def waiting_on() -> str:
        pending = [name for name, future in tasks.items() if not runner.done(future)]
        shown = ", ".join(pending[:5]) + (f" and {len(pending) - 5} more" if len(pending) > 5 else "")
        here = [llm.describe() for (root, _), llm in list(_llms.items()) if root == run.root]
        return "; ".join(filter(None, [f"{len(pending)} tasks ({shown})", *here, runner.describe()]))

    watch = Watch(config.orchestration, waiting_on)
    for future in tasks.values():
        while not runner.wait(future, WATCH_S):
            watch.check()
        watch.moved()


def make_dataset(config: RunConfig, run: Run, runner: Runner, start: float) -> tuple[Report, list[Record]]:
    """Every shard, then the whole-set stages in order; writes the dataset and the report."""
    per_record, whole_set = stage_classes(config)
    planners = {name: generators.strategies()[name](Context(config), record_cost(config))
                for name in config.strategies}
    seeds = run.seeds()
    work = plan(config, seeds, planners, calls_after(config))
    embedder = embedder_for(config, run)  # the embedding model loads while the first requests go out
    embed_ahead(embedder, seeds, len(seeds), compares_vectors(config))  # the metrics compare rows with them
    # Progress: the run's LLM calls against its budget; the LLM stages' records against the rows planned.
    llm_stages = [EXPAND_STAGE, *(cls.name for cls in per_record if cls.calls_llm)]
    progress.reset()
    progress.start(CALLS, config.budget.max_llm_calls)
    for name in llm_stages:
        progress.start(name, work.records)
    log.info("run %s: %d shards; %d LLM calls and %d records planned, stages %s", config.run_id, len(work.shards),
             config.budget.max_llm_calls, work.records, " > ".join(cls.name for cls in per_record + whole_set))
    tasks = {}
    for w in work.shards:
        name = f"shard-{w.index}-{w.source}"
        tasks[name] = runner.submit(name, run_shard, config=config, work=w)
    plotting = threading.Thread(target=warm_plots, daemon=True, name="germinate-warm-plots")
    plotting.start()
    _wait_watched(runner, tasks, run, config)
    embedder.forget_background()
    by_shard = [future.result() for future in tasks.values()]
    stages = [functools.reduce(operator.add, column) for column in zip(*by_shard)]
    for name in [CALLS, *llm_stages]:
        progress.finish(name)
    for stats in stages:
        log.info(stage_line(stats))
    source = None
    for cls in whole_set:
        sealed = not any(s.unsealed for s in stages)
        # Counted here, in the driver, whether the stage runs in this process or on a Ray worker.
        log.info("%s: started on %d records", cls.name, stages[-1].kept)
        progress.start(cls.name, stages[-1].kept)
        future = runner.submit(cls.name, run_stage, config=config, stage=cls.name, source=source, sealed_input=sealed)
        while not runner.wait(future, WATCH_S):
            continue  # the runner shows the progress meanwhile
        stages.append(future.result())
        progress.advance(cls.name, stages[-1].records_in)
        progress.finish(cls.name)
        log.info(stage_line(stages[-1]))
        source = cls.name
    final = run.kept(source) if source else run.survivors()
    strategies = {}
    for name, share in work.strategies.items():
        expand = [stats[0] for w, stats in zip(work.shards, by_shard) if w.source == name]
        strategies[name] = StrategyReport(**share, expand_calls=sum(s.llm_calls for s in expand),
                                          records=sum(s.kept for s in expand))
    problem = shortfall(config, stages, final)
    notes = {cls.name: note for cls in per_record + whole_set
             if (note := cls.note(cls.settings_in(config), functools.partial(run.rejected, cls.name)))}
    forecast = kept_forecast(config)
    if problem and not config.budget.allow_partial:
        report = build_report(config, stages, strategies, len(seeds), final, None, None,
                              time.perf_counter() - start, problem, notes, forecast)
        run.drop_dataset()
        report.write(run.report_path)
        raise RunFailed(not_written(problem, stages))
    metrics = run_metrics(run, final, embedder.vectors_sync)
    report = build_report(config, stages, strategies, len(seeds), final, metrics, str(run.dataset_dir),
                          time.perf_counter() - start, problem, notes, forecast)
    plotting.join()  # matplotlib draws in one thread at a time
    images = plots(final)
    run.write_dataset(final, {"README.md": dataset_card(config, report, list(images)).encode(), **images})
    report.write(run.report_path)
    if config.hub.repo_id:  # after the report: a failed upload loses nothing, and a rerun retries it
        report.published = publish(run, config.hub.repo_id, config.hub.private, config.hub.revision)
        report.write(run.report_path)
    short = short_of_rows(config, report)
    if short:
        log.warning(short)
    log.info(run_line(report) + (f"; published: {report.published}" if report.published else ""))
    return report, final


def check_run(config: RunConfig) -> None:
    """What a user can get wrong beyond the config's own checks, found before anything is written."""
    generators.check_strategies(config)
    per_record, whole_set = stage_classes(config)
    for stage in known_stages().values():  # a stage off by default, switched on where it cannot run
        if stage.name not in config.stages and not stage.switched_on_by(stage.Settings()) \
                and stage.switched_on_by(stage.settings_in(config)):
            raise UserError(f"{stage.section}: switches '{stage.name}' on, but stages does not list it; add it to "
                            "stages")
    for stage in per_record + whole_set:
        stage.check_inputs(stage.settings_in(config))
    if config.hub.repo_id:
        check_token()


def warm_stages(config: RunConfig) -> None:
    """What the run's stages load once per process, loaded while its seeds and servers are checked."""
    for cls in stage_classes(config)[0]:
        cls.warm(cls.settings_in(config))


def prepare(config: RunConfig) -> tuple[RunConfig, Run]:
    """A run's one check, then its directory (created, or reopened to resume). Its servers are asked
    once, here, before anything is written; what they said (the model, its JSON dialect) travels in
    the returned config to every shard, so no worker asks again. Shard tasks may run in other
    processes (Ray): the run directory becomes an absolute path."""
    warm(config.embedding)  # torch takes seconds to load: meanwhile the run, its seeds and servers are checked
    check_run(config)
    threading.Thread(target=warm_stages, args=(config,), daemon=True, name="germinate-warm-stages").start()
    return prepare_run(config.model_copy(update={"output_dir": config.output_dir.resolve()}))


def execute(config: RunConfig, runner: ContextManager[Runner]) -> tuple[Report, list[Record]]:
    """The run, under its lock, on `runner`; `config` has been through `prepare_run`."""
    start = time.perf_counter()
    run = Run(config.output_dir / config.run_id)
    try:
        with run.locked(), runner as opened:
            try:
                return make_dataset(config, run, opened, start)
            except BaseException:
                close_llm(run, failed=True)  # what waits on a server stops now, not after its patience
                raise
    finally:
        close_llm(run)


def run_here(config: RunConfig, runner: Callable[[RunConfig], ContextManager[Runner]] = Threads) -> Report:
    """The run from this process, without Prefect: no API server to start (Prefect's ephemeral one
    takes 5-30 s), so the first request goes out at once. Shard tasks on its threads, or on
    `runner` (flows/ray_run.py's, on Ray)."""
    config, _ = prepare(config)
    report, _ = execute(config, runner(config))
    return report
