"""The Prefect flow `build_dataset`: the run of germinate/driver.py with each shard and each whole-set
stage a Prefect task run, on threads or on Ray, retried on errors, its progress an artifact in
the UI. Wiring only.

No `from __future__ import annotations` here: Prefect builds the flow's parameter model (the UI's
form, a deployment's validation) from the annotations, and needs them as types, not strings."""

import logging
import pickle
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator
from uuid import UUID

from prefect import flow, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler
from prefect.task_runners import ThreadPoolTaskRunner

from germinate.config import RunConfig
from germinate.budget import Overspent
from germinate.errors import UserError
from germinate import driver
from germinate.flows import ray_for
from germinate.flows.artifacts import RunProgress, report_artifacts
from germinate.report import Report

PROGRESS_INTERVAL_S = 2.0  # how often the progress artifacts are updated


def _transient(task, task_run, state) -> bool:
    """Retry a shard task unless the user must fix something first (a bad file, a bad setting, a
    strategy that spends past its allowance)."""
    return not isinstance(state.result(raise_on_failure=False), (UserError, Overspent))


def _call(function: Callable[..., Any], parameters: bytes, workers: Any = None) -> Any:
    """A task run's body: `function` here, or on a Ray shard worker. Its parameters travel pickled:
    Prefect walks a task's parameters for futures, recursively, and a shard's records made that
    walk the largest cost of a small shard."""
    return workers.call(function, parameters) if workers else function(**pickle.loads(parameters))


shard_task = task(_call, name="shard", cache_policy=NO_CACHE, persist_result=False)
stage_task = task(_call, name="whole-set stage", cache_policy=NO_CACHE, persist_result=False)


class PrefectTasks:
    """A pipeline runner whose tasks are Prefect task runs in this process's threads, named after their
    shard or stage; on Ray a shard task hands its work to a shard worker. A shard that fails on an error is
    retried with exponential backoff and jitter."""

    def __init__(self, config: RunConfig):
        self.config = config
        retries = config.orchestration
        self.tasks = {
            driver.run_shard: shard_task.with_options(
                retries=retries.task_retries,
                retry_delay_seconds=[retries.retry_delay_s * 2**i for i in range(retries.task_retries)],
                retry_jitter_factor=0.5,
                retry_condition_fn=_transient,
            ),
            driver.run_stage: stage_task,
        }

    def __enter__(self) -> "PrefectTasks":
        with ExitStack() as stack:  # what is entered here is left in reverse order by __exit__
            ray = ray_for(self.config)
            self.workers = ray.Workers(self.config) if ray else None
            if self.workers:  # Ray goes last, once no thread waits on it
                stack.callback(self.workers.shutdown)
            self.runner = stack.enter_context(ThreadPoolTaskRunner(max_workers=self.config.orchestration.workers))
            if self.workers:  # the workers go first: a task still waiting on one (a failed run) ends
                stack.callback(self.workers.stop)
            self.shown, self.shown_at = RunProgress(), 0.0
            stack.callback(self.shown.update)  # the stages' last state: done
            self.stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.__exit__(*exc)

    def _collect(self) -> None:
        if self.workers:
            self.workers.collect()
        if time.monotonic() - self.shown_at >= PROGRESS_INTERVAL_S:
            self.shown.update()
            self.shown_at = time.monotonic()

    def submit(self, name: str, function: Callable[..., Any], **parameters: Any):
        # Shards go to the Ray workers; a whole-set stage runs here, where the run's vectors are made.
        workers = self.workers if function is driver.run_shard else None
        call = {"function": function, "parameters": pickle.dumps(parameters), "workers": workers}
        return self.runner.submit(self.tasks[function].with_options(task_run_name=name), call)

    def wait(self, future, timeout: float) -> bool:
        """While waiting, the run's progress artifacts move in the UI."""
        # The future's own wait: prefect.futures.wait(..., timeout) raised its timer's CancelledError
        # when the timer fired as the wait returned (a Ray test run failed so, 1 round in 16).
        future.wait(timeout)
        self._collect()
        return self.done(future)

    def done(self, future) -> bool:
        return future.state.is_final()

    def describe(self) -> str:
        return self.workers.describe() if self.workers else ""


@flow(name="build-dataset", persist_result=False, log_prints=True)
def build_dataset(config: RunConfig) -> Report:
    """Seeds -> expand (the configured strategies) -> the per-record stages, as records are made ->
    the whole-set stages -> Hugging Face dataset folder. Resumes finished shards."""
    ray_for(config)  # checked per run, inside the flow: a deployment or a served flow runs where its config says
    with _logs_in_the_flow_run(runtime.flow_run.id):
        config, _ = driver.prepare(config)
        _name_flow_run(config)
        report, final = driver.execute(config, PrefectTasks(config))
    report_artifacts(report, final)
    return report


def _name_flow_run(config: RunConfig) -> None:
    """The flow run is found in the UI by the run's id (given, or chosen by `prepare`) and strategies."""
    with get_client(sync_client=True) as client:
        tags = sorted({*runtime.flow_run.tags, "germinate", *config.strategies})
        client.update_flow_run(runtime.flow_run.id, name=config.run_id, tags=tags)


class _ToFlowRun(logging.Filter):
    """Lines logged outside Prefect's run context (the LLM's event loop, the embedding receiver) still
    belong to this flow run; inside a task run, Prefect links them to it."""

    def __init__(self, flow_run_id: UUID):
        super().__init__()
        self.flow_run_id = flow_run_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "flow_run_id", None):
            try:
                get_run_context()
            except MissingContextError:
                record.flow_run_id = self.flow_run_id
        return True


@contextmanager
def _logs_in_the_flow_run(flow_run_id: UUID) -> Iterator[None]:
    """germinate's own log lines (each stage's numbers, warnings, the run's last line) in the flow run's
    logs as well as wherever they went before (the terminal shows warnings only)."""
    logger = logging.getLogger("germinate")
    handler = APILogHandler(level=logging.INFO)
    handler.addFilter(_ToFlowRun(flow_run_id))
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
