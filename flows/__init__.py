"""Prefect flows and deployments: wiring only; the logic lives in generators/, filters/ and germinate/."""

import os

# The machines this runs on are often offline; Prefect must not try to phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The ephemeral API server migrates a fresh database on its first start, which took over
# 20 s (Prefect's default limit) on 2 busy cores.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
