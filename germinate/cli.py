"""`germinate`: grow an instruction dataset from seeds."""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.exceptions import TyperException

from germinate import progress
from germinate.config import build_config
from germinate.errors import UserError
from germinate.flows import ray_for
from germinate.generators import strategies
from germinate.report import Report, describe_metrics, drop_reasons, forecast_line, run_line

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Grow a diverse instruction-tuning dataset (Parquet, Hugging Face layout) from a few seed tasks.",
)


def _console(stderr: bool = False) -> Console:
    """Lines name paths a user copies: never hard-wrap them at the terminal's width. Written to a file or
    a pipe (a scheduled run's log, `| tee`), rich would assume 80 columns and cut the summary table."""
    made = Console(stderr=stderr, soft_wrap=True)
    if not made.is_terminal:
        made.width = max(made.width, 160)
    return made


console = _console()
errors = _console(stderr=True)


@app.callback()
def germinate() -> None:
    """germinate: seeds in, SFT data out."""


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed or 0
        return Text(f"{speed:5.1f}/s", style="progress.data.speed")


class RichProgress:
    """A bar for the run's LLM calls against its budget and one per stage (records against the plan),
    with their rates, advanced as requests and records finish."""

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


class _WarningLine(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        errors.print(f"[yellow]warning:[/] {escape(record.getMessage())}", highlight=False)


def _show_warnings() -> None:
    """germinate's own warnings (a server that stopped answering, one that left the rotation) as
    one line each, above the progress bars."""
    logger = logging.getLogger("germinate")
    logger.addHandler(_WarningLine(logging.WARNING))
    logger.propagate = False


def _prefect_server() -> bool:
    """Whether runs go to a Prefect server (PREFECT_API_URL, or a Prefect profile that names one): then
    a run is a Prefect flow run, shown in its UI. Otherwise nothing would show it, and the run starts
    at once instead of after Prefect's ephemeral API server (10-30 s)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def _fail(exc: UserError) -> typer.Exit:
    errors.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
    return typer.Exit(2)


def _summary(report: Report) -> None:
    table = Table(title=f"run {report.run_id}", title_justify="left")
    for column in ("stage", "in", "kept", "dropped", "LLM calls", "cached", "tokens", "time"):
        table.add_column(column, justify="left" if column == "stage" else "right", no_wrap=True)
    for s in report.stages:
        table.add_row(
            s.stage + (" (resumed)" if s.resumed else ""),
            str(s.records_in),
            str(s.kept),
            str(sum(s.dropped.values())),
            str(s.llm_calls),
            str(s.cached_calls),
            f"{s.prompt_tokens + s.completion_tokens:,}",
            f"{s.seconds:.0f}s",
        )
    console.print(table)
    for s in report.stages:
        if s.dropped:
            console.print(f"  {s.stage} dropped: {drop_reasons(s)}")
    for note in report.notes.values():
        console.print(f"  {escape(note)}", highlight=False)
    console.print(f"  diversity: {describe_metrics(report.metrics)}")
    if report.problem:
        console.print(f"[yellow]partial:[/] {escape(report.problem)}", highlight=False)
    if line := forecast_line(report):
        console.print(f"  {escape(line)}", highlight=False)
    console.print(
        f"{escape(run_line(report))}; rejected records with reasons: {Path(report.dataset).parent / 'stages'}",
        highlight=False,
    )
    console.print(f"Load it:  datasets.load_dataset('{report.dataset}', split='train')")
    if report.published:
        console.print(f"Published: {report.published}")
    console.print(
        "Scale up: germinate run --max-records 5000 --max-llm-calls 20000 --hops 3 "
        "--backend openai --base-url http://localhost:8000/v1  (see README)",
    )


# The LLM flags `run` and the taxonomy commands share.
BACKEND_HELP = "transformers (embedded, default), openai or vllm."
MODEL_HELP = "Model name (openai/vllm) or .gguf path (transformers)."
BASE_URL_HELP = "OpenAI-compatible server, e.g. http://localhost:8000/v1."


def strategy_flags() -> dict[str, tuple[str, Any, str]]:
    """The flags strategies give `germinate run`: a setting whose field names a `flag` in its
    `json_schema_extra` (AIDE's hops: --hops). Its dotted key: (flag, type, help)."""
    return {
        f"{strategy.section}.{key}": (field.json_schema_extra["flag"], field.annotation,
                                      f"{strategy.name}: {field.description}")
        for strategy in strategies().values() for key, field in strategy.Settings.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and "flag" in field.json_schema_extra
    }


def with_strategy_flags(command: Callable) -> Callable:
    """`command` (taking `**strategy_settings`) with an option for each of `strategy_flags`: a
    strategy gives itself a flag in its own module."""
    parameters = [p for p in inspect.signature(command).parameters.values() if p.kind != p.VAR_KEYWORD]
    for key, (flag, kind, help) in strategy_flags().items():
        parameters.append(inspect.Parameter(key.replace(".", "__"), inspect.Parameter.KEYWORD_ONLY,
                                            annotation=Optional[kind], default=typer.Option(None, flag, help=help)))
    command.__signature__ = inspect.signature(command).replace(parameters=parameters)
    return command


# The settings `germinate run`'s flags set, so a bad value is blamed on the flag, not on the config file.
RUN_FLAGS = {
    "seeds": "--seeds", "strategies": "--strategy", "budget.max_records": "--max-records",
    "budget.max_llm_calls": "--max-llm-calls", "llm.backend": "--backend", "llm.model": "--model",
    "llm.base_url": "--base-url", "llm.concurrency": "--concurrency", "output_dir": "--output-dir",
    "run_id": "--run-id", "orchestration.task_runner": "--task-runner", "orchestration.ray_address": "--ray-address",
    **{key: flag for key, (flag, _, _) in strategy_flags().items()},
}


@app.command()
@with_strategy_flags
def run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (see README)."),
    seeds: Optional[Path] = typer.Option(None, help="Seed tasks: .jsonl, .json, .csv or .parquet."),
    strategy: Optional[str] = typer.Option(
        None, help=f"Expansion strategy: {', '.join(strategies())} (mix them in the config)."
    ),
    max_records: Optional[int] = typer.Option(None, help="Budget: generated rows in the dataset."),
    max_llm_calls: Optional[int] = typer.Option(None, help="Budget: LLM requests in the whole run."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    base_url: Optional[str] = typer.Option(None, help=BASE_URL_HELP),
    concurrency: Optional[int] = typer.Option(None, help="LLM requests in flight at once."),
    output_dir: Optional[Path] = typer.Option(None, help="Where runs are written (default data/runs)."),
    run_id: Optional[str] = typer.Option(None, help="Name the run; an existing id resumes that run."),
    task_runner: Optional[str] = typer.Option(None, help="Where shard tasks run: threads (default) or ray."),
    ray_address: Optional[str] = typer.Option(
        None, help="Ray cluster for --task-runner ray: auto, ray://head:10001 (default: a local Ray for the run)."
    ),
    allow_partial: bool = typer.Option(
        False, "--allow-partial",
        help="Write the dataset even when more requests failed than budget.max_failed_share allows.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="For scripts: no progress bars, and the run report (report.json) as JSON on stdout."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Say what the run would ask of the model (LLM calls by stage and strategy, tokens, "
        "time at the server's measured rate, cost at budget.price) without generating anything.",
    ),
    **strategy_settings: Any,  # the strategies' own flags (`with_strategy_flags`)
) -> None:
    """Run the pipeline: seeds -> expand -> respond -> quality gate -> dataset/ (Parquet + dataset card)."""
    values = {
        "seeds": seeds,
        "strategies": {strategy: 1.0} if strategy else None,
        **{key.replace("__", "."): value for key, value in strategy_settings.items()},
        "budget.max_records": max_records,
        "budget.max_llm_calls": max_llm_calls,
        "budget.allow_partial": allow_partial or None,
        "llm.backend": backend,
        "llm.model": model,
        "llm.base_url": base_url,
        "llm.concurrency": concurrency,
        "output_dir": output_dir,
        "run_id": run_id,
        "orchestration.task_runner": task_runner,
        "orchestration.ray_address": ray_address,
    }
    resolved = ray = None
    # Our progress bars, warnings and summary are the console output (a failed run is one error line,
    # not Prefect's traceback of it); Prefect's run logs still reach its API and UI.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    _show_warnings()
    try:
        from germinate.embed import warm
        from germinate.runs import new_run_id

        resolved = build_config(config, values, RUN_FLAGS)
        warm(resolved.embedding)  # the model loads (seconds) while Prefect and the stages are imported
        if dry_run:
            from germinate.forecast import forecast

            planned = forecast(resolved)
            print(planned.model_dump_json(indent=2) if as_json else "\n".join(planned.lines()))
            return
        resolved = resolved.model_copy(update={"run_id": resolved.run_id or new_run_id()})  # named if interrupted
        ray = ray_for(resolved)
        if ray:
            ray.start(resolved)  # Ray and its workers start (seconds) meanwhile
        if _prefect_server():
            from germinate.flows.build import build_dataset
        else:
            from germinate.driver import Threads, run_here

            build_dataset = functools.partial(run_here, runner=ray.RayTasks if ray else Threads)

        with Progress(
            TextColumn("{task.description:>14}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=as_json,
        ) as bars:
            progress.set_listener(RichProgress(bars))
            report = build_dataset(resolved)
    except UserError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        if resolved is not None:
            errors.print(f"interrupted; resume: run the same command with --run-id {resolved.run_id}")
        raise typer.Exit(130) from None
    finally:
        if ray:
            ray.stop_untaken()  # a run that failed its checks never took the Ray started for it
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
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
        results = compare_runs([Run.open(path) for path in run_dirs], embedding_model)
    except UserError as exc:
        raise _fail(exc) from None
    table = Table()
    for column in ("run", "kept/generated", "distance", "clusters", "distinct-2", "seed cosine"):
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
        "distance: mean pairwise cosine distance between instructions; clusters: k-means clusters of all the "
        "runs' rows together that each run reaches; distinct-2: distinct word bigrams / all; seed cosine: mean "
        f"cosine of generated rows to their nearest seed (relevance). Embeddings: {embedding_model}.",
    )


@app.command()
def publish(
    run_dir: Path = typer.Argument(..., help="A finished run (data/runs/<run-id>)."),
    repo_id: str = typer.Option(..., help="Hub dataset repo ORG/NAME; created when missing."),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
    revision: Optional[str] = typer.Option(None, help="Branch to publish to (created when missing); default main."),
) -> None:
    """Upload a run's dataset folder (Parquet shards, card, plots) to the Hugging Face Hub.
    The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT picks another Hub."""
    from pydantic import ValidationError

    from germinate.hub import publish as publish_run
    from germinate.runs import Run
    from germinate.settings import HubConfig

    try:
        try:
            hub = HubConfig(repo_id=repo_id, private=private, revision=revision)
        except ValidationError:  # only the repo id has a form to get wrong
            raise UserError(f"--repo-id: '{repo_id}' is not a Hub dataset repo id (ORG/NAME)") from None
        url = publish_run(Run.open(run_dir), hub.repo_id, hub.private, hub.revision)
    except UserError as exc:
        raise _fail(exc) from None
    console.print(f"published {run_dir / 'dataset'} to {repo_id}: {url}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A finished run (data/runs/<run-id>)."),
    format: str = typer.Option(
        "messages", "--format",
        help="messages (chat turns), alpaca, sharegpt, or dpo (the preference pairs: prompt, chosen, rejected)."),
    output: Optional[Path] = typer.Option(None, help="JSONL file to write; default RUN_DIR/export/FORMAT.jsonl."),
) -> None:
    """Write a run's dataset as JSONL in a trainer's format."""
    from germinate.export import FORMATS, export_jsonl
    from germinate.io import write_atomic
    from germinate.runs import Run

    try:
        if format not in FORMATS:
            raise UserError(f"--format: '{format}' is not one of {', '.join(FORMATS)}")
        records = Run.open(run_dir).dataset()
        target = output or run_dir / "export" / f"{format}.jsonl"
        data, count = export_jsonl(records, format)
        try:
            write_atomic(target, data)
        except OSError as exc:
            raise UserError(f"{target}: cannot write ({exc.strerror or exc})") from None
    except UserError as exc:
        raise _fail(exc) from None
    console.print(f"{count} {'pairs' if format == 'dpo' else 'rows'} in {format} format: {target}")


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(4200, help="Port of the UI and API."),
    output_dir: Path = typer.Option(Path("data/runs"), help="Its SQLite database is kept here, beside the runs."),
) -> None:
    """Start a Prefect server (UI and API) for germinate's runs: analytics off, SQLite under the run root.
    Then `export PREFECT_API_URL=http://HOST:PORT/api` and runs, schedules and artifacts show in the UI."""
    database = output_dir.resolve() / "prefect.db"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(UserError(f"--output-dir: cannot create {output_dir} ({exc.strerror or exc})")) from None
    # Where the UI's pages call the API: this server, whatever port it is on (Prefect's own default
    # stays at 4200). Listening on every interface, a browser elsewhere needs PREFECT_UI_API_URL set.
    reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    env = {
        "PREFECT_UI_API_URL": f"http://{reach}:{port}/api",
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database}",
    }
    console.print(f"Prefect UI: http://{reach}:{port}  (database {database})")
    console.print(f"Point runs at it:  export PREFECT_API_URL=http://{reach}:{port}/api")
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    os.execve(sys.executable, command, env)  # the server is the process now: Ctrl-C stops it


@app.command()
def schedule(
    config: Path = typer.Option(..., "--config", "-c", help="YAML run config: every scheduled run uses it."),
    cron: str = typer.Option(..., help='When to run, as cron (UTC), e.g. "0 3 * * *".'),
    name: Optional[str] = typer.Option(None, help="Deployment name (default: the config file's name)."),
) -> None:
    """Serve `build_dataset` on a schedule from this process, without a work pool. Needs a Prefect
    server (`germinate ui`, PREFECT_API_URL); each scheduled run is a new run id."""
    try:
        resolved = build_config(config)
        if resolved.run_id:
            raise UserError(f"{config}: 'run_id' is set, but every scheduled run needs its own; remove it")
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise UserError(
                "schedule needs a Prefect server: start `germinate ui`, "
                "then export PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=cron)
        except ValueError:
            raise UserError(f"--cron: '{cron}' is not a cron expression (e.g. \"0 3 * * *\")") from None
        from germinate.driver import check_run
        from germinate.flows.build import build_dataset

        check_run(resolved)
        ray_for(resolved)
    except UserError as exc:
        raise _fail(exc) from None
    build_dataset.serve(
        name=name or config.stem, cron=cron, parameters={"config": resolved.model_dump(mode="json")},
        tags=["germinate", *resolved.strategies],
    )


# The old names (`serve` and `server` differed by one letter), kept for one release.
app.command("server", hidden=True, deprecated="Use `germinate ui`.")(ui)
app.command("serve", hidden=True, deprecated="Use `germinate schedule`.")(schedule)


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

    values = {"llm.backend": backend, "llm.model": model, "llm.base_url": base_url}
    llm_config = build_config(None, values, RUN_FLAGS).llm
    return make_llm(llm_config, None)


def _write_taxonomy(out: Path, taxonomy) -> None:
    from germinate.io import write_atomic
    from germinate.taxonomy import dump_taxonomy, parse_taxonomy

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
    from germinate.taxonomy import load_taxonomy

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
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    base_url: Optional[str] = typer.Option(None, help=BASE_URL_HELP),
) -> None:
    """Generate a taxonomy with the LLM; edit the YAML by hand afterwards if you like."""
    from germinate.taxonomy import builder

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
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    base_url: Optional[str] = typer.Option(None, help=BASE_URL_HELP),
) -> None:
    """Ask the LLM for more disciplines under each sub-field; names already present are skipped."""
    from germinate.taxonomy import builder, load_taxonomy

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


def main() -> int:
    """The console script. A flag's value that is not of its type is one line too, not a usage box."""
    try:
        return app(standalone_mode=False) or 0
    except TyperException as exc:  # a usage error: an unknown option, a value that is not a number...
        if exc.format_message():  # empty when the help was shown instead (no command given)
            errors.print(f"[red]error:[/] {escape(exc.format_message())}", highlight=False)
        return 2
    except typer.Abort:
        return 130
    finally:
        # A run leaves millions of objects; the collector would walk them all again while the
        # interpreter shuts down (half a second of a ten-second run), and there is nothing to collect.
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
