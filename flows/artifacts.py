"""What the Prefect UI shows for a run: a progress artifact of its LLM calls while it runs, then the
report (markdown) and a sample of the dataset's rows (table). Wiring only: the content is the
engine's (germinate.report, germinate.progress)."""

from __future__ import annotations

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from germinate import progress
from germinate.records import Record
from germinate.report import Report, report_markdown

SAMPLE_ROWS = 20
TEXT_LIMIT = 500  # characters of a long text shown in the sample table


class StageProgress:
    """A progress artifact: what `stage` counts (LLM calls) done of `total`, as a percentage."""

    def __init__(self, stage: str, total: int):
        self.stage, self.total = stage, total
        self.shown = 0.0
        self.id = create_progress_artifact(0.0, description=f"{stage}: {total} at most", _sync=True)

    def update(self) -> None:
        share = min(100.0, 100.0 * progress.done(self.stage) / max(self.total, 1))
        if share != self.shown:
            update_progress_artifact(self.id, share, _sync=True)
            self.shown = share


def _clip(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"


def report_artifacts(report: Report, rows: list[Record]) -> None:
    create_markdown_artifact(
        report_markdown(report), key="germinate-report", description=f"run {report.run_id}", _sync=True
    )
    sample = [
        {
            "strategy": r.strategy, "instruction": _clip(r.instruction), "input": _clip(r.input),
            "output": _clip(r.output), "quality_score": r.quality_score, "cluster": r.cluster,
        }
        for r in rows[:: max(1, len(rows) // SAMPLE_ROWS)][:SAMPLE_ROWS]  # spread over the dataset
    ]
    create_table_artifact(
        sample, key="germinate-sample", description=f"run {report.run_id}: {len(sample)} of {len(rows)} rows",
        _sync=True,
    )
