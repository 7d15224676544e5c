"""A run never waits silently. While its shards run, the driver asks a `Watch` every few seconds:
when no request was answered, no record made and no task done for `orchestration.stall_s`, it logs
what the run waits on; after `orchestration.stall_timeout_s` it stops the run (exit 2). What
finished has its markers, so the same command resumes."""

from __future__ import annotations

import logging
import time
from typing import Callable

from germinate import progress
from germinate.errors import RunStalled
from germinate.settings import OrchestrationConfig

log = logging.getLogger(__name__)


class Watch:
    def __init__(self, settings: OrchestrationConfig, describe: Callable[[], str]):
        """`describe()` says what the run waits on: its tasks, slots and requests in flight."""
        self.stall_s, self.timeout_s = settings.stall_s, settings.stall_timeout_s
        self.describe = describe
        self.task_done_at = self.reported_at = time.monotonic()

    def moved(self) -> None:
        """A task finished."""
        self.task_done_at = time.monotonic()

    def check(self) -> None:
        now = time.monotonic()
        since = max(self.task_done_at, progress.moved_at())
        quiet = now - since
        if quiet >= self.timeout_s:
            raise RunStalled(
                f"the run stalled: nothing done for {self.timeout_s:g}s (orchestration.stall_timeout_s); waiting on "
                f"{self.describe()}; what finished is kept: run the same command again to resume"
            )
        if quiet >= self.stall_s and now - max(since, self.reported_at) >= self.stall_s:
            self.reported_at = now
            log.warning("nothing done for %.0fs (orchestration.stall_s); waiting on %s", quiet, self.describe())
