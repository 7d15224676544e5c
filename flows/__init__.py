"""Prefect flows and deployments, and Ray runs: wiring only; the logic lives in generators/, filters/ and
germinate/ (the run's driver: germinate/driver.py)."""

import os
from types import ModuleType
from typing import TYPE_CHECKING

from germinate.errors import UserError

if TYPE_CHECKING:
    from germinate.config import RunConfig

# The machines this runs on are often offline; Prefect must not try to phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The ephemeral API server migrates a fresh database on its first start, which took over
# 20 s (Prefect's default limit) on 2 busy cores.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def ray_for(config: "RunConfig") -> ModuleType | None:
    """flows/ray_run.py when the run's config asks for Ray (its runner and workers), else None; checked
    before anything is written, so a run without the ray extra says so and leaves nothing."""
    if config.orchestration.task_runner != "ray":
        return None
    try:
        from germinate.flows import ray_run
    except ModuleNotFoundError as exc:
        if exc.name != "ray" and not (exc.name or "").startswith("ray."):
            raise
        raise UserError("orchestration.task_runner: ray needs the ray extra (pip install -e '.[ray]')") from None
    return ray_run
