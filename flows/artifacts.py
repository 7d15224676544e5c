"""What the Prefect UI shows for a run: progress artifacts while it runs (its LLM calls, each stage's
records), then the report (markdown) and a sample of the dataset's rows (table). Wiring only: the content is the
engine's (germinate.report, germinate.progress)."""

from __future__ import annotations

import re
import textwrap
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from germinate import progress
from germinate.driver import CALLS
from germinate.records import Record, show
from germinate.report import Report, report_markdown

SAMPLE_ROWS = 20
SAMPLE_SEEDS = 3  # seeds are the user's own rows: a few show what the generated ones grew from
TEXT_LIMIT = 300  # characters of a long text shown in the sample table
LINE_CHARS = 60  # a line of a cell: instruction and output side by side fit in 1,600 px


def _key(stage: str) -> str:
    """An artifact key (lowercase letters, digits, dashes) that names the stage: progress-llm-calls."""
    return "progress-" + re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-")


class RunProgress:
    """A progress artifact per stage the run started (its LLM calls against the budget, each stage's
    records against those planned for it), updated while the flow waits on its tasks, 100% once done."""

    def __init__(self) -> None:
        self.ids: dict[str, UUID] = {}
        self.shown: dict[str, tuple[float, str]] = {}

    def update(self) -> None:
        for stage, done, planned, finished in progress.stages():
            unit = "calls" if stage == CALLS else "records"
            if finished:
                share, line = 100.0, f"**{stage}**: {done:,} {unit} done"
            else:  # a retried shard counts its records again: never past the plan before the end
                count = min(done, planned)
                share = min(99.0, 100.0 * count / max(planned, 1))
                line = f"**{stage}**: {count:,} of {planned:,} {unit}"
            if stage not in self.ids:
                self.ids[stage] = create_progress_artifact(share, key=_key(stage), description=line, _sync=True)
            elif self.shown[stage] != (share, line):
                update_progress_artifact(self.ids[stage], share, description=line, _sync=True)
            self.shown[stage] = share, line


def _clip(text: str | None) -> str:
    """Shortened, and broken into lines: the UI's table cells keep a text's lines as they are."""
    text = text or ""
    text = text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"
    return "\n".join(textwrap.fill(line, LINE_CHARS) for line in text.splitlines())


def _sample(rows: list[Record]) -> list[Record]:
    """What a person reads first: generated rows, spread over the dataset, then a few seeds (only seeds
    when the run generated none)."""
    generated = [r for r in rows if r.strategy != "seed"]
    seeds = [r for r in rows if r.strategy == "seed"][: SAMPLE_SEEDS if generated else SAMPLE_ROWS]
    room = SAMPLE_ROWS - len(seeds)
    return generated[:: max(1, len(generated) // max(room, 1))][:room] + seeds


def report_artifacts(report: Report, rows: list[Record]) -> None:
    create_markdown_artifact(
        report_markdown(report), key="germinate-report", description=f"run {report.run_id}", _sync=True
    )
    sample = [
        {
            "strategy": r.strategy,
            "hop": r.hop,
            "instruction": _clip(show(r)),
            "output": _clip(r.output),
            "score": None if r.quality_score is None else round(r.quality_score, 1),
        }
        for r in _sample(rows)
    ]
    create_table_artifact(
        sample, key="germinate-sample", description=f"run {report.run_id}: {len(sample)} of {len(rows)} rows",
        _sync=True,
    )
