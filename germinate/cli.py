"""`germinate`: grow an instruction dataset from seeds."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
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
# Lines name paths a user copies: never hard-wrap them at the terminal's width.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


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


def _fail(exc: UserError) -> typer.Exit:
    errors.print(f"[red]error:[/] {exc}", highlight=False)
    return typer.Exit(2)


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
            console.print(f"  {s['stage']} dropped: {reasons}")
    console.print(f"  diversity: {describe_metrics(report['metrics'])}")
    console.print(
        f"[bold]{report['rows']} rows[/] in [bold]{report['dataset']}[/] "
        f"({report['llm_calls']}/{report['budget']['max_llm_calls']} LLM calls, {report['wall_seconds']:.0f}s wall); "
        f"rejected records with reasons: {Path(report['dataset']).parent / 'stages'}",
    )
    console.print(f"Load it:  datasets.load_dataset('parquet', data_dir='{report['dataset']}/data')")
    console.print(
        "Scale up: germinate run --max-records 5000 --max-llm-calls 20000 --hops 3 "
        "--backend openai --base-url http://localhost:8000/v1  (see README)",
    )


@app.command()
def run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (see README)."),
    seeds: Optional[Path] = typer.Option(None, help="Seed tasks: .jsonl, .json, .csv or .parquet."),
    strategy: Optional[str] = typer.Option(
        None, help="Expansion strategy: aide, tcia, glan, self-instruct or evol-instruct (mix them in the config)."
    ),
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
        "strategies": {strategy: 1.0} if strategy else None,
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
        from generators import check_strategies
        from germinate.runs import prepare_run

        resolved = build_config(config, overrides)
        check_strategies(resolved)
        resolved, _ = prepare_run(resolved)
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
        raise _fail(exc) from None
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
        raise _fail(exc) from None
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
    )


taxonomy_app = typer.Typer(
    no_args_is_help=True, help="GLAN taxonomies (fields -> sub-fields -> disciplines): check, build, extend."
)
app.add_typer(taxonomy_app, name="taxonomy")


def _describe_taxonomy(path: Path, taxonomy) -> None:
    subs = sum(len(f.sub_fields) for f in taxonomy.fields)
    count = sum(len(s.disciplines) for f in taxonomy.fields for s in f.sub_fields)
    console.print(f"{path}: {len(taxonomy.fields)} fields, {subs} sub-fields, {count} disciplines")


def _taxonomy_llm(backend: Optional[str], model: Optional[str], base_url: Optional[str]):
    from germinate.llm import make_llm

    llm_config = build_config(None, {"llm.backend": backend, "llm.model": model, "llm.base_url": base_url}).llm
    return make_llm(llm_config, None)


def _write_taxonomy(out: Path, taxonomy) -> None:
    from germinate.io import write_atomic
    from taxonomy import dump_taxonomy, parse_taxonomy

    text = dump_taxonomy(taxonomy)
    parse_taxonomy(yaml.safe_load(text), str(out))  # what is written must load again
    try:
        write_atomic(out, text.encode())
    except OSError as exc:
        raise UserError(f"{out}: cannot write ({exc.strerror or exc})") from None
    _describe_taxonomy(out, taxonomy)


@taxonomy_app.command("check")
def taxonomy_check(path: Path = typer.Argument(..., help="Taxonomy YAML.")) -> None:
    """Check a taxonomy file against its schema and count its nodes."""
    from taxonomy import load_taxonomy

    try:
        _describe_taxonomy(path, load_taxonomy(path))
    except UserError as exc:
        raise _fail(exc) from None


@taxonomy_app.command("build")
def taxonomy_build(
    out: Path = typer.Option(..., help="Where to write the taxonomy YAML."),
    field: list[str] = typer.Option([], help="A field to build (repeat); default: the LLM names them."),
    fields: int = typer.Option(8, help="Fields the LLM names when none are given."),
    sub_fields: int = typer.Option(4, help="Sub-fields per field."),
    disciplines: int = typer.Option(4, help="Disciplines per sub-field."),
    backend: Optional[str] = typer.Option(None, help="llamacpp (embedded, default), openai or vllm."),
    model: Optional[str] = typer.Option(None, help="Model name (openai/vllm) or .gguf path (llamacpp)."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server, e.g. http://localhost:8000/v1."),
) -> None:
    """Generate a taxonomy with the LLM; edit the YAML by hand afterwards if you like."""
    from taxonomy import builder

    try:
        llm = _taxonomy_llm(backend, model, base_url)
        try:
            taxonomy = llm.run(builder.build(llm, field, fields, sub_fields, disciplines), None)
        finally:
            llm.close()
        _write_taxonomy(out, taxonomy)
    except UserError as exc:
        raise _fail(exc) from None


@taxonomy_app.command("extend")
def taxonomy_extend(
    path: Path = typer.Argument(..., help="Taxonomy YAML to extend."),
    out: Path = typer.Option(..., help="Where to write the extended taxonomy (may be PATH itself)."),
    disciplines: int = typer.Option(2, help="New disciplines asked for per sub-field."),
    field: list[str] = typer.Option([], help="Extend only this field (repeat); default: all."),
    backend: Optional[str] = typer.Option(None, help="llamacpp (embedded, default), openai or vllm."),
    model: Optional[str] = typer.Option(None, help="Model name (openai/vllm) or .gguf path (llamacpp)."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server, e.g. http://localhost:8000/v1."),
) -> None:
    """Ask the LLM for more disciplines under each sub-field; names already present are skipped."""
    from taxonomy import builder, load_taxonomy

    try:
        taxonomy = load_taxonomy(path)
        llm = _taxonomy_llm(backend, model, base_url)
        try:
            grown = llm.run(builder.extend(llm, taxonomy, disciplines, field), None)
        finally:
            llm.close()
        _write_taxonomy(out, grown)
    except UserError as exc:
        raise _fail(exc) from None


if __name__ == "__main__":
    sys.exit(app())
