"""The run report: one typed model (report.json), read alike by the summary, the card and the Prefect
artifacts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Literal

from pydantic import BaseModel

from germinate.config import RunConfig, known_stages
from germinate.export import preference_pair
from germinate.forecast import Forecast
from germinate.io import write_atomic
from germinate.llm.cap import OVER_BUDGET
from germinate.metrics import Metrics
from germinate.records import Record, to_dataset_table
from germinate.settings import BudgetConfig
from germinate.stats import StageStats


class StrategyReport(BaseModel):
    """A strategy's part of the budget (planned) and what it made with it."""

    share: float
    max_llm_calls: int
    max_records: int
    expand_calls: int
    records: int


class Report(BaseModel):
    """What a run made and spent: report.json in the run directory, `germinate run --json`."""

    run_id: str
    status: Literal["complete", "partial", "failed"]  # partial: written although requests failed
    problem: str | None  # why the data is not all that was asked for
    strategy: str
    strategies: dict[str, StrategyReport]
    seeds: int
    models: list[str]
    dataset: str | None  # its folder; None when the run failed and wrote none
    rows: int
    rows_by_strategy: dict[str, int]  # "seed": the seed tasks kept as they were given
    dataset_bytes: int
    wall_seconds: float
    llm_calls: int  # sent (or answered from the cache), not those a cap kept back
    failed_calls: int
    prompt_tokens: int = 0  # as the servers reported them, every try's (the run's, its cache's answers included)
    completion_tokens: int = 0
    cost: float | None = None  # dollars, at budget.price
    budget: BudgetConfig
    stages: list[StageStats]
    metrics: Metrics | None
    notes: dict[str, str] = {}  # stage -> what it says it did (decontamination: its benchmarks and their drops)
    preference_pairs: int = 0  # rows whose answer the judge revised and scored higher
    preference_gain: float | None = None  # their mean score gain
    published: str | None = None  # the Hub URL
    forecast: Forecast | None = None  # what `germinate run --dry-run` of the same config said it would spend

    @property
    def seed_rows(self) -> int:
        return self.rows_by_strategy.get("seed", 0)

    def write(self, path: Path) -> None:
        write_atomic(path, self.model_dump_json(indent=2).encode())

    @classmethod
    def read(cls, path: Path) -> Report:
        return cls.model_validate_json(path.read_bytes())


def held_back(stages: list[StageStats]) -> int:
    """Requests a cap kept back: never sent, so neither calls nor failures."""
    return sum(s.errors[OVER_BUDGET] for s in stages)


def cap_problem(config: RunConfig, stages: list[StageStats]) -> str:
    caps = ", ".join(f"budget.{key} {value:,}" for key in ("max_tokens", "max_cost")
                     if (value := getattr(config.budget, key)) is not None)
    return (f"the run ended at its cap ({caps}): {held_back(stages)} LLM requests that could have passed it were "
            "not sent; raise it and run the same command to go on")


def shortfall(config: RunConfig, stages: list[StageStats], rows: list[Record]) -> str | None:
    """Why the run did not make the data asked for, or None: more requests failed after their
    retries than budget.max_failed_share allows, or it made no rows at all."""
    calls = sum(s.llm_calls for s in stages) - held_back(stages)
    errors = sum((s.errors for s in stages), Counter())
    del errors[OVER_BUDGET]
    failed = sum(errors.values())
    if failed > config.budget.max_failed_share * calls:
        kinds = ", ".join(f"{kind} {n}" for kind, n in errors.most_common())
        return (
            f"{failed} of {calls} LLM requests failed after their retries ({kinds}), more than "
            f"budget.max_failed_share allows ({config.budget.max_failed_share:g})"
        )
    if not rows:
        return f"the run made no rows: {cap_problem(config, stages)}" if held_back(stages) else "the run made no rows"
    return None


def short_of_rows(config: RunConfig, report: Report) -> str | None:
    """Why the dataset has fewer generated rows than budget.max_records, and the setting to raise; None
    when it has them all."""
    generated, asked = report.rows - report.seed_rows, config.budget.max_records
    if generated >= asked or held_back(report.stages):  # a cap ended it: its problem says so
        return None
    calls = config.budget.max_llm_calls
    if report.llm_calls >= 0.9 * calls:
        return (f"{generated} generated rows of the {asked} asked (budget.max_records): the run spent "
                f"{report.llm_calls} of its {calls} LLM calls: raise --max-llm-calls")
    # Calls are left: each unit (a seed) had its share of the rows, or too few calls left to grow
    # another record; the gate dropped some of what was grown.
    grown = sum(s.records for s in report.strategies.values())
    pools = {stage: f"{stage.section}.{stage.pool_setting}" for stage in known_stages().values() if stage.pool_setting}
    more = [f"raise {pool} (records grown per row)" for stage, pool in pools.items() if config.switched_on(stage)] or [
        f"run {stage.name} (in stages, {stage.section} enabled: it grows {pool} records per row)"
        for stage, pool in pools.items()]
    return (f"{generated} generated rows of the {asked} asked (budget.max_records): the strategies grew {grown} "
            f"records with {report.llm_calls} of {calls} LLM calls and the gate kept {generated}: "
            f"{', or '.join([*more, '--max-llm-calls', 'give more seeds'])}")


def not_written(problem: str, stages: list[StageStats]) -> str:
    """The one line a user reads when a run fails for its data, with what to do next."""
    unanswered = sum(s.unanswered_calls for s in stages) - held_back(stages)
    again = "run the same command again to retry the unanswered requests, or " if unanswered else ""
    return f"{problem}; no dataset written: {again}add --allow-partial to write what was made"


def build_report(
    config: RunConfig,
    stages: list[StageStats],
    strategies: dict[str, StrategyReport],
    seeds: int,
    records: list[Record],
    metrics: Metrics | None,
    dataset_dir: str | None,
    wall_seconds: float,
    problem: str | None = None,
    notes: dict[str, str] | None = None,
    forecast: Forecast | None = None,
) -> Report:
    """`dataset_dir` and `metrics` are None when the run failed for its data (`problem`) and wrote none.
    Requests that went unanswered make the data partial even below budget.max_failed_share: the
    same command again asks them again, and may change the dataset."""
    capped = held_back(stages)
    unanswered = sum(s.unanswered_calls for s in stages) - capped
    prompt_tokens, completion_tokens = sum(s.prompt_tokens for s in stages), sum(s.completion_tokens for s in stages)
    if problem is None and capped:
        problem = cap_problem(config, stages)
    pairs = [r for r in records if preference_pair(r)]
    gains = [r.quality_score - r.draft_score for r in pairs if r.quality_score is not None and r.draft_score is not None]
    if problem is None and unanswered:
        problem = (f"{unanswered} LLM requests went unanswered after their retries; run the same command again "
                   "to ask them again")
    return Report(
        run_id=config.run_id,
        status="failed" if dataset_dir is None else "partial" if problem else "complete",
        problem=problem,
        strategy=config.strategy_label,
        strategies=strategies,
        seeds=seeds,
        models=sorted({r.model for r in records if r.model}),
        dataset=dataset_dir,
        rows=len(records),
        rows_by_strategy=dict(Counter(r.strategy for r in records).most_common()),
        dataset_bytes=to_dataset_table(records).nbytes,
        wall_seconds=round(wall_seconds, 2),
        llm_calls=sum(s.llm_calls for s in stages) - capped,
        failed_calls=sum(s.failed_calls for s in stages) - capped,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=config.budget.cost(prompt_tokens, completion_tokens),
        budget=config.budget,
        stages=stages,
        metrics=metrics,
        notes=notes or {},
        preference_pairs=len(pairs),
        preference_gain=round(mean(gains), 2) if gains else None,
        forecast=forecast,
    )


def describe_metrics(m: Metrics) -> str:
    return (
        f"mean pairwise cosine distance {m.mean_distance:.3f}, {m.clusters_covered}/{m.clusters} "
        f"k-means clusters of the candidates covered, distinct bigrams {m.distinct_bigrams:.2f}, "
        f"mean cosine to the nearest seed {m.seed_similarity:.3f}, kept {m.rows}/{m.generated}"
        + (f" (vectors of a sample of {m.measured_on} rows by id)" if 0 < m.measured_on < m.rows else "")
    )


def drop_reasons(s: StageStats) -> str:
    """"duplicate 12, not_selected 20": what a stage dropped, by reason."""
    return ", ".join(f"{reason} {n}" for reason, n in sorted(s.dropped.items()))


def stage_line(s: StageStats) -> str:
    """A stage's numbers on one line, for logs."""
    reasons = drop_reasons(s)
    return (f"{s.stage}: {s.records_in} in, {s.kept} kept, {sum(s.dropped.values())} dropped"
            f"{f' ({reasons})' if reasons else ''}, {s.llm_calls} LLM calls ({s.cached_calls} cached), "
            f"{s.prompt_tokens + s.completion_tokens:,} tokens, {s.seconds:.0f}s")


def run_line(report: Report) -> str:
    """What the run made, on one line: the last line of its summary and of its log."""
    generated, asked = report.rows - report.seed_rows, report.budget.max_records
    made = f"{generated} generated" + (f" of {asked} asked" if generated < asked else "")
    return (f"{report.rows} rows ({made}" + (f" + {report.seed_rows} seeds" if report.seed_rows else "") +
            f") in {report.dataset} "
            f"({report.llm_calls}/{report.budget.max_llm_calls} LLM calls, "
            + (f"${report.cost:,.2f}, " if report.cost is not None else "") + f"{report.wall_seconds:.0f}s wall)")


def forecast_line(report: Report) -> str | None:
    """The dry run's forecast beside what the run spent, when the config had one."""
    if report.forecast is None:
        return None

    def spend(calls: int, tokens: int, cost: float | None) -> str:
        return f"{calls} LLM calls, {tokens:,} tokens" + (f", ${cost:,.2f}" if cost is not None else "")

    planned = report.forecast
    return (f"spent {spend(report.llm_calls, report.prompt_tokens + report.completion_tokens, report.cost)}; "
            f"the dry run forecast {spend(planned.llm_calls, planned.prompt_tokens + planned.completion_tokens, planned.cost)}")


def stage_table(report: Report) -> str:
    """Markdown: per stage, records in and kept, drops by reason, LLM calls, tokens and wall time."""
    rows = "".join(
        f"| {s.stage} | {s.records_in} | {s.kept} | "
        f"{', '.join(f'{k}: {v}' for k, v in sorted(s.dropped.items())) or '-'} | {s.llm_calls} | "
        f"{s.prompt_tokens + s.completion_tokens:,} | {s.seconds:.0f}s |\n"
        for s in report.stages
    )
    header = "| stage | in | kept | dropped (reason: count) | LLM calls | tokens | time |\n"
    return header + "|---|---|---|---|---|---|---|\n" + rows


def strategy_table(report: Report) -> str:
    rows = "".join(
        f"| {name} | {s.share:.0%} | {s.max_llm_calls} | {s.expand_calls} | {s.records} |\n"
        for name, s in report.strategies.items()
    )
    return "| strategy | share | LLM calls allowed | expansion calls | records made |\n|---|---|---|---|---|\n" + rows


def report_markdown(report: Report) -> str:
    """The run report as the Prefect UI shows it."""
    m = report.metrics
    row = (f"| {m.rows}/{m.generated} | {m.mean_distance:.3f} | {m.clusters_covered}/{m.clusters} | "
           f"{m.distinct_bigrams:.2f} | {m.seed_similarity:.3f} |")
    published = f" · published: {report.published}" if report.published else ""
    pairs = f" · {report.preference_pairs} preference pairs" if report.preference_pairs else ""
    notes = "".join(f"{note}\n\n" for note in report.notes.values())
    return f"""# germinate run `{report.run_id}`

{report.rows} rows in `{report.dataset}` · {report.llm_calls}/{report.budget.max_llm_calls} LLM calls ·
{report.wall_seconds:.0f}s wall{pairs}{published}

## Stages

{notes}{stage_table(report)}
## Strategies

{strategy_table(report)}
## Diversity and relevance

| kept/generated | pairwise distance | clusters covered | distinct-2 | seed cosine |
|---|---|---|---|---|
{row}
"""
