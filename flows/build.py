"""The Prefect flow `build_dataset`: the run of flows/pipeline.py with each shard and each whole-set
stage a Prefect task run, on threads or on Ray, retried on errors, its progress an artifact in
the UI. Wiring only.

No `from __future__ import annotations` here: Prefect builds the flow's parameter model (the UI's
form, a deployment's validation) from the annotations, and needs them as types, not strings."""

import logging
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator
from uuid import UUID

from prefect import flow, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.futures import wait
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from germinate.config import RunConfig
from germinate.errors import UserError
from germinate.flows import pipeline
from germinate.flows.artifacts import RunProgress, report_artifacts
from germinate.report import Report

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 2.0  # how often the progress artifacts are updated


def _transient(task, task_run, state) -> bool:
    """Retry a shard task unless the user must fix something first (a bad file, a bad setting)."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


shard_task = task(pipeline.run_shard, name="shard", cache_policy=NO_CACHE, persist_result=False)
stage_task = task(pipeline.run_stage, name="whole-set stage", cache_policy=NO_CACHE, persist_result=False)


def _task_runner(config: RunConfig) -> TaskRunner:
    """Chosen per run, inside the flow, so a deployment or a served flow runs where its config says."""
    if config.orchestration.task_runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise UserError("orchestration.task_runner: ray needs the ray extra (pip install -e '.[ray]')") from None
        return RayTaskRunner(address=config.orchestration.ray_address)
    return ThreadPoolTaskRunner(max_workers=config.orchestration.workers)


class PrefectTasks:
    """A pipeline runner whose tasks are Prefect task runs, named after their shard or stage. A shard
    that fails on an error is retried with exponential backoff and jitter."""

    def __init__(self, config: RunConfig):
        self.config = config
        retries = config.orchestration
        self.tasks = {
            pipeline.run_shard: shard_task.with_options(
                retries=retries.task_retries,
                retry_delay_seconds=[retries.retry_delay_s * 2**i for i in range(retries.task_retries)],
                retry_jitter_factor=0.5,
                retry_condition_fn=_transient,
            ),
            pipeline.run_stage: stage_task,
        }

    def __enter__(self) -> "PrefectTasks":
        with ExitStack() as stack:  # what is entered here is left in reverse order by __exit__
            # Task runs report to the flow run's API wherever they run: a task on a Ray worker takes its
            # settings from here, and with no API URL in them it would start a Prefect server of its own
            # (its task runs missing from this server's UI; workers starting servers at once can hang).
            with get_client(sync_client=True) as client:
                stack.enter_context(temporary_settings({PREFECT_API_URL: str(client.api_url)}))
            self.runner = stack.enter_context(_task_runner(self.config))
            self.shared = self.state = None
            if self.config.orchestration.task_runner == "ray":  # Ray is up: the run's shared slots and progress
                from germinate.flows import ray_run

                self.shared, self.state = ray_run.start(self.config)
                stack.callback(ray_run.stop, self.state)
            self.shown, self.shown_at = RunProgress(), 0.0
            stack.callback(self.shown.update)  # the stages' last state: done
            self.stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.__exit__(*exc)

    def _collect(self) -> None:
        if self.state is not None:
            from germinate.flows import ray_run

            for worker in ray_run.collect(self.state):
                log.warning("Ray worker %s stopped reporting for %gs: its request slots go back to the run",
                            worker, ray_run.LEASE_S)
        if time.monotonic() - self.shown_at >= PROGRESS_INTERVAL_S:
            self.shown.update()
            self.shown_at = time.monotonic()

    def submit(self, name: str, function: Callable[..., Any], **parameters: Any):
        if self.shared:
            parameters["shared"] = self.shared
        return self.runner.submit(self.tasks[function].with_options(task_run_name=name), parameters)

    def wait(self, future, timeout: float) -> bool:
        """While waiting, the run's progress artifacts move in the UI."""
        done = bool(wait([future], timeout=timeout).done)  # one future at a time: each wait leaves a callback
        self._collect()
        return done

    def done(self, future) -> bool:
        return future.state.is_final()

    def describe(self) -> str:
        if self.state is None:
            return ""
        from germinate.flows import ray_run

        return ray_run.describe(self.state)


def check_run(config: RunConfig) -> None:
    """What `germinate serve` checks before it schedules runs (each run checks its seeds and servers)."""
    pipeline.check_run(config)
    _task_runner(config)


@flow(name="build-dataset", persist_result=False, log_prints=True)
def build_dataset(config: RunConfig) -> Report:
    """Seeds -> expand (the configured strategies) -> the per-record stages, as records are made ->
    the whole-set stages -> Hugging Face dataset folder. Resumes finished shards."""
    _task_runner(config)
    with _logs_in_the_flow_run(runtime.flow_run.id):
        config, _ = pipeline.prepare(config)
        _name_flow_run(config)
        report, final = pipeline.execute(config, PrefectTasks(config))
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
