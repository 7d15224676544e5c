"""`germinate run --dry-run`: what a run will ask of its model, said before it asks.

The run itself is the forecast: the pipeline runs, in a scratch directory, on a stand-in model that
answers every request at once as a capable model would (germinate/llm/stand_in.py), so every
strategy, stage and budget rule counts its calls as it will in the real run. What the stand-in
cannot know is how fast the server answers: a few real requests (the probe) measure it.

The forecast is kept in the output directory under the run's data settings and seeds, so the run
of the same config, when it comes, sets it beside what it spent (its report's `forecast`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

from germinate.config import RunConfig, data_settings
from germinate.io import load_seeds, write_atomic
from germinate.llm import Request, checked, make_llm
from germinate.llm.cap import OVER_BUDGET
from germinate.records import show

PROBE_REQUESTS = 8
PROBE_TOKENS = 64


class Forecast(BaseModel):
    """Calls and tokens if every answer passes the checks (a stage's last look, such as the judge's
    revisions, may spend the rest of budget.max_llm_calls); the wall time at the probe's rate (None
    when the probe got no answer), the cost at budget.price."""

    llm_calls: int
    max_llm_calls: int
    last_looks: list[str]  # the stages whose last look may spend what the shards have left
    problem: str | None  # what the run would say of its data (a cap that ends it)
    calls_by_stage: dict[str, int]
    calls_by_strategy: dict[str, int]  # their expansion's calls
    prompt_tokens: int
    completion_tokens: int
    rows: int
    tokens_per_second: float | None  # completion tokens, measured by the probe
    probe_requests: int
    cost: float | None  # dollars, at budget.price

    @property
    def seconds(self) -> float | None:
        return self.completion_tokens / self.tokens_per_second if self.tokens_per_second else None

    def lines(self) -> list[str]:
        stages = ", ".join(f"{stage} {calls}" for stage, calls in self.calls_by_stage.items() if calls)
        strategies = ", ".join(f"{name} {calls}" for name, calls in self.calls_by_strategy.items())
        rest = f"; {' and '.join(self.last_looks)} may spend the rest" if self.last_looks else ""
        lines = [
            "Dry run: nothing was generated. If every answer passes the checks, the run makes",
            f"  {self.llm_calls} LLM calls (budget.max_llm_calls {self.max_llm_calls}{rest})",
            f"  by stage: {stages}",
            f"  to expand, by strategy: {strategies}",
            f"  {self.prompt_tokens:,} prompt and at most {self.completion_tokens:,} completion tokens",
            f"  {self.rows} rows",
        ]
        if self.seconds is not None:
            lines.append(f"  in at most about {_duration(self.seconds)} at the model's {self.tokens_per_second:,.0f} "
                         f"completion tokens/s (measured with {self.probe_requests} requests in flight)")
        elif self.probe_requests:
            lines.append(f"  in a time unknown: none of the {self.probe_requests} requests that measure the model's "
                         "rate was answered")
        if self.cost is not None:
            lines.append(f"  for about ${self.cost:,.2f} at budget.price")
        if self.problem:
            lines.append(f"  and then: {self.problem}")
        return lines


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def kept_at(config: RunConfig) -> Path:
    """Where the forecast of `config` is kept: by its data settings and its seeds' bytes (a dot folder of
    the output directory: no run id starts with a dot)."""
    settings = data_settings(config.model_dump(mode="json"))
    seeds = hashlib.sha256(Path(settings.pop("seeds")).read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps([settings, seeds], sort_keys=True).encode()).hexdigest()[:16]
    return config.output_dir / ".forecasts" / f"{key}.json"


def kept_forecast(config: RunConfig) -> Forecast | None:
    """The forecast a dry run of this config made, if one did and this version reads it (the run's end
    must not fail for a note beside it)."""
    try:
        return Forecast.model_validate_json(kept_at(config).read_bytes())
    except (OSError, ValidationError):
        return None


def measure_rate(config: RunConfig) -> tuple[float, int]:
    """Completion tokens/s of the run's model with as many requests in flight as it will have (up to
    PROBE_REQUESTS), each a seed's task, short. Not cached: it measures the server."""
    seeds = load_seeds(config.seeds)
    count = min(PROBE_REQUESTS, config.llm.concurrency)
    requests = [Request([{"role": "user", "content": show(seeds[i % len(seeds)])}], max_tokens=PROBE_TOKENS,
                        temperature=config.generation.temperature, seed=i) for i in range(count)]
    llm = make_llm(config.llm, None)
    try:
        start = time.perf_counter()
        results = llm.run(llm.generate(requests))
        seconds = time.perf_counter() - start
    finally:
        llm.close()
    made = sum(r.completion_tokens for r in results if r.ok)
    return (made / seconds if made else 0.0), count


def forecast(config: RunConfig) -> Forecast:
    """The run on the stand-in, in a scratch directory that goes with it; the probe first, so an
    unreachable server is said before anything runs. Kept for the run of the same config."""
    config = config.model_copy(update={"llm": checked(config.llm)})  # the model named as the run will name it
    rate, probes = measure_rate(config) if config.llm.backend != "stand_in" else (0.0, 0)
    from germinate.driver import run_here, stage_classes

    with tempfile.TemporaryDirectory(prefix="germinate-dry-run-") as scratch:
        report = run_here(config.model_copy(update={
            "llm": config.llm.model_copy(update={"backend": "stand_in", "cache": False}),
            "output_dir": Path(scratch), "run_id": "dry-run",
            "budget": config.budget.model_copy(update={"allow_partial": True}),  # what it would make, whatever it is
            "hub": config.hub.model_copy(update={"repo_id": None}),
            "orchestration": config.orchestration.model_copy(update={"task_runner": "threads"}),
        }))
    made = Forecast(
        llm_calls=report.llm_calls, max_llm_calls=config.budget.max_llm_calls,
        last_looks=[stage.name for stage in stage_classes(config)[0] if stage.has_last_look()], problem=report.problem,
        calls_by_stage={stage.stage: stage.llm_calls - stage.errors[OVER_BUDGET] for stage in report.stages},
        calls_by_strategy={name: s.expand_calls for name, s in report.strategies.items()},
        prompt_tokens=report.prompt_tokens, completion_tokens=report.completion_tokens, rows=report.rows,
        tokens_per_second=rate or None, probe_requests=probes, cost=report.cost,
    )
    write_atomic(kept_at(config), made.model_dump_json(indent=2).encode())
    return made

