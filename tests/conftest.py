import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Before Prefect is imported anywhere: a private Prefect home, offline settings.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="germinate-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"  # as the CLI sets it
os.environ["HF_HUB_OFFLINE"] = "1"

from germinate.config import RunConfig  # noqa: E402
from germinate.embed import embed  # noqa: E402
from germinate.stage import Context, Stage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

TINY_SEEDS = [
    {"id": "s-sum", "instruction": "Write a Python function that returns the sum of a list of numbers."},
    {"id": "s-apples", "instruction": "Tom has 3 apples and buys 5 more. How many apples does he have now?",
     "output": "Tom has 3 + 5 = 8 apples."},
    {"id": "s-haiku", "instruction": "Write a haiku about autumn leaves.", "category": "writing"},
]


def germinate(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    """The command line in its own process, as a user runs it; `env` adds to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "germinate.cli", *args], cwd=cwd, env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def seeds_file(tmp_path: Path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in TINY_SEEDS))
    return path


GATE_OFF = {stage: {"enabled": False} for stage in
            ("heuristics", "exact_dedup", "near_dedup", "semantic_dedup", "judge", "select")}


def tiny_config(seeds: Path, output_dir: Path, **changes) -> RunConfig:
    """3 seeds, 2 hops, one attribute and one operation per node, short outputs.
    `changes` use "__" for nesting: tiny_config(..., aide__hops=1)."""
    data = {
        "seeds": str(seeds),
        "output_dir": str(output_dir),
        "aide": {"hops": 2, "attributes": 1, "operations": ["concretizing"], "personas": 1, "reflection_tries": 1},
        "generation": {"response_max_tokens": 40},
        "budget": {"max_llm_calls": 36, "max_records": 14},
        "shard_size": 2,
    }
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return RunConfig.model_validate(data)


@pytest.fixture
def make_config(seeds_file: Path, tmp_path: Path):
    return lambda **changes: tiny_config(seeds_file, tmp_path / "runs", **changes)


def make_stage(cls: type[Stage], llm=None, **settings) -> Stage:
    """A stage as a run builds it, with the run's config made of `settings` ("__" for nesting) and
    real embeddings."""

    async def vectors(texts):
        return embed(texts)

    data = {}
    for dotted, value in settings.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return cls(Context(RunConfig.model_validate(data), llm, vectors))


def run_stage(stage: Stage, records: list):
    """(kept, rejected) of one call of the stage."""
    return asyncio.run(stage.run(records))
