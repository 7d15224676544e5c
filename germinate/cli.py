"""`germinate`: grow an instruction dataset from seeds."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text
from rich.table import Table

from germinate import progress
from germinate.config import build_config
from germinate.errors import UserError
from germinate.report import describe_metrics

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Grow a diverse instruction-tuning dataset (Parquet, Hugging Face layout) from a few seed tasks.",
)
console = Console()
errors = Console(stderr=True)


@app.callback()
def main() -> None:
    """germinate: seeds in, SFT data out."""


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed or 0
        return Text(f"{speed:5.1f}/s", style="progress.data.speed")


class RichProgress:
    """One bar per stage: done/total and rate, advanced by the LLM layer as requests finish."""

    def __init__(self, bars: Progress):
        self.bars = bars
        self.tasks: dict[str, Any] = {}

    def start(self, stage: str, total: int) -> None:
        self.tasks[stage] = self.bars.add_task(stage, total=total or None)

    def advance(self, stage: str, amount: int = 1) -> None:
        if stage in self.tasks:
            self.bars.advance(self.tasks[stage], amount)

    def finish(self, stage: str) -> None:
        task = self.bars.tasks[self.tasks[stage]]
        self.bars.update(self.tasks[stage], total=task.completed)


def _summary(report: dict[str, Any]) -> None:
    table = Table(title=f"run {report['run_id']}", title_justify="left")
    for column in ("stage", "in", "kept", "dropped", "LLM calls", "cached", "tokens", "time"):
        table.add_column(column, justify="left" if column == "stage" else "right", no_wrap=True)
    for s in report["stages"]:
        table.add_row(
            s["stage"] + (" (resumed)" if s["resumed"] else ""),
            str(s["records_in"]),
            str(s["kept"]),
            str(sum(s["dropped"].values())),
            str(s["llm_calls"]),
            str(s["cached_calls"]),
            f"{s['prompt_tokens'] + s['completion_tokens']:,}",
            f"{s['seconds']:.0f}s",
        )
    console.print(table)
    for s in report["stages"]:
        if s["dropped"]:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(s["dropped"].items()))
            console.print(f"  {s['stage']} dropped: {reasons}", soft_wrap=True)
    console.print(f"  diversity: {describe_metrics(report['metrics'])}", soft_wrap=True)
    console.print(
        f"[bold]{report['rows']} rows[/] in [bold]{report['dataset']}[/] "
        f"({report['llm_calls']}/{report['budget']['max_llm_calls']} LLM calls, {report['wall_seconds']:.0f}s wall); "
        f"rejected records with reasons: {Path(report['dataset']).parent / 'stages'}",
        soft_wrap=True,
    )
    console.print(f"Load it:  datasets.load_dataset('parquet', data_dir='{report['dataset']}/data')", soft_wrap=True)
    console.print(
        "Scale up: germinate run --max-records 5000 --max-llm-calls 20000 --hops 3 "
        "--backend openai --base-url http://localhost:8000/v1  (see README)",
        soft_wrap=True,
    )


@app.command()
def run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (see README)."),
    seeds: Optional[Path] = typer.Option(None, help="Seed tasks: .jsonl, .json, .csv or .parquet."),
    strategy: Optional[str] = typer.Option(None, help="Expansion strategy: aide."),
    hops: Optional[int] = typer.Option(None, help="AIDE: depth K of the synthesis tree."),
    max_records: Optional[int] = typer.Option(None, help="Budget: rows in the dataset, seeds included."),
    max_llm_calls: Optional[int] = typer.Option(None, help="Budget: LLM requests in the whole run."),
    backend: Optional[str] = typer.Option(None, help="llamacpp (embedded, default), openai or vllm."),
    model: Optional[str] = typer.Option(None, help="Model name (openai/vllm) or .gguf path (llamacpp)."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server, e.g. http://localhost:8000/v1."),
    concurrency: Optional[int] = typer.Option(None, help="LLM requests in flight at once."),
    output_dir: Optional[Path] = typer.Option(None, help="Where runs are written (default data/runs)."),
    run_id: Optional[str] = typer.Option(None, help="Name the run; an existing id resumes that run."),
) -> None:
    """Run the pipeline: seeds -> expand -> respond -> quality gate -> dataset/ (Parquet + dataset card)."""
    overrides = {
        "seeds": seeds,
        "strategy": strategy,
        "aide.hops": hops,
        "budget.max_records": max_records,
        "budget.max_llm_calls": max_llm_calls,
        "llm.backend": backend,
        "llm.model": model,
        "llm.base_url": base_url,
        "llm.concurrency": concurrency,
        "output_dir": output_dir,
        "run_id": run_id,
    }
    resolved = None
    try:
        from germinate.runs import prepare_run

        resolved, _ = prepare_run(build_config(config, overrides))
        # Our progress bars and summary are the console output; Prefect's run logs still reach its API/UI.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        from flows.build import build_dataset

        with Progress(
            TextColumn("{task.description:>14}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bars:
            progress.set_listener(RichProgress(bars))
            report = build_dataset(resolved)
    except UserError as exc:
        errors.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        if resolved is not None:
            errors.print(f"interrupted; resume: run the same command with --run-id {resolved.run_id}")
        raise typer.Exit(130) from None
    _summary(report)


@app.command()
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (data/runs/<run-id>) to compare."),
    embedding_model: str = typer.Option(
        "all-MiniLM-L6-v2", help="sentence-transformers model for every run (name or path)."
    ),
) -> None:
    """Diversity and relevance of finished runs' datasets, measured alike: pick a strategy by them."""
    from germinate.metrics import compare_runs
    from germinate.runs import Run

    try:
        for path in run_dirs:
            if not (path / "config.yaml").exists():
                raise UserError(f"{path}: not a germinate run directory (no config.yaml)")
        results = compare_runs([Run(path) for path in run_dirs], embedding_model)
    except UserError as exc:
        errors.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    table = Table()
    for column in ("run", "kept/generated", "pairwise distance", "clusters", "distinct-2", "seed cosine"):
        table.add_column(column, justify="left" if column == "run" else "right", no_wrap=column == "run")
    for name, m in results.items():
        table.add_row(
            Path(name).name,
            f"{m.rows}/{m.generated}",
            f"{m.mean_distance:.3f}",
            f"{m.clusters_covered}/{m.clusters}",
            f"{m.distinct_bigrams:.2f}",
            f"{m.seed_similarity:.3f}",
        )
    console.print(table)
    console.print(
        "pairwise distance: mean cosine distance between instructions; clusters: k-means clusters of all the "
        "runs' rows together that each run reaches; distinct-2: distinct word bigrams / all; seed cosine: mean "
        f"cosine of generated rows to their nearest seed (relevance). Embeddings: {embedding_model}.",
        soft_wrap=True,
    )


if __name__ == "__main__":
    sys.exit(app())
