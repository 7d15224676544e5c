"""The dataset card: README.md with the Hub's YAML metadata, how the data was made, and its plots."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from germinate.config import RunConfig, data_settings, used_sections
from germinate.filters import stages as filters
from germinate.records import DATASET_SCHEMA, Record
from germinate.report import Report, describe_metrics, stage_table, strategy_table

_HF_DTYPES = {pa.float64(): "float64"}  # Arrow calls it "double"; the Hub's card format wants float64
CLUSTER_PLOT = "images/cluster_sizes.png"
SCORE_PLOT = "images/quality_scores.png"


def _hf_type(arrow_type: pa.DataType) -> dict[str, Any]:
    if pa.types.is_list(arrow_type):
        (inner,) = _hf_type(arrow_type.value_type).values()
        return {"list": inner}
    if pa.types.is_struct(arrow_type):
        return {"struct": [{"name": f.name, **_hf_type(f.type)} for f in arrow_type]}
    return {"dtype": _HF_DTYPES.get(arrow_type, str(arrow_type))}


def features() -> list[dict[str, Any]]:
    """The dataset's columns in the card's `dataset_info.features` form."""
    return [{"name": f.name, **_hf_type(f.type)} for f in DATASET_SCHEMA]


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "n>1M"


def _png(draw) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display needed

    figure = Figure(figsize=(6, 3), layout="constrained")
    draw(figure.subplots())
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def warm_plots() -> None:
    """Load matplotlib and its fonts (about a second), drawing a figure nobody sees: called while a run
    waits on its shards, so that its end does not wait on them."""
    _png(lambda ax: ax.set(title="rows", xlabel="clusters"))


def plots(records: list[Record]) -> dict[str, bytes]:
    """Rows per k-means cluster (diversity selection) and the judge's scores, where the run made them."""
    found = {}
    sizes = sorted(Counter(r.cluster for r in records if r.cluster is not None).values(), reverse=True)
    if sizes:

        def clusters(ax):
            from matplotlib.ticker import MaxNLocator

            # Clusters by size, not by label: legible for one cluster or a thousand.
            if len(sizes) > 40:  # bars that touch: one outline, drawn as fast for a thousand as for forty
                ax.stairs(sizes, [i + 0.5 for i in range(len(sizes) + 1)], fill=True, color="#4c72b0")
            else:
                ax.bar(range(1, len(sizes) + 1), sizes, width=0.8, color="#4c72b0")
            ax.set(xlabel="clusters, largest first", ylabel="rows",
                   title=f"Rows per k-means cluster ({len(sizes)} clusters)")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))

        found[CLUSTER_PLOT] = _png(clusters)
    scores = [r.quality_score for r in records if r.quality_score is not None]
    if scores:

        def histogram(ax):
            ax.hist(scores, bins=[b + 0.5 for b in range(0, 11)], color="#55a868", edgecolor="white")
            ax.set(xlabel="judge's score of the answer (1-10)", ylabel="rows", title="Answer quality scores")
            ax.set_xticks(range(1, 11))

        found[SCORE_PLOT] = _png(histogram)
    return found


def _settings(config: RunConfig) -> str:
    """The settings that shaped the data, as a reader of the card needs them: the used strategies'
    sections, file names rather than local paths, no server addresses or cluster names."""
    settings = data_settings(config.model_dump(mode="json"))
    settings["seeds"] = config.seeds.name
    for section in used_sections(settings):
        for key, value in getattr(config, section):
            if isinstance(value, Path):
                settings[section][key] = value.name
    return yaml.safe_dump(settings, sort_keys=False)


def dataset_card(config: RunConfig, report: Report, images: list[str]) -> str:
    metadata = {
        "language": ["en"],
        "license": config.hub.license,
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(report.rows)],
        "tags": ["synthetic", "germinate", "instruction-tuning", *config.strategies],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "dataset_info": {  # the default config's
            "features": features(),
            "splits": [{"name": "train", "num_bytes": report.dataset_bytes, "num_examples": report.rows}],
        },
    }
    pairs = ""
    if report.preference_pairs:
        metadata["configs"].append(
            {"config_name": "preference", "data_files": [{"split": "train", "path": "preference/train-*"}]})
        gain = f" (by {report.preference_gain:g} points on average)" if report.preference_gain is not None else ""
        pairs = (f"Preference pairs: {report.preference_pairs} answers the judge revised and scored higher{gain}, "
                 "each with the answer it replaced: the `preference` config (prompt, chosen, rejected, "
                 "score_chosen, score_rejected, critique).\n")
    gate = [stage for name in config.stages if (stage := filters().get(name)) and config.switched_on(stage)]
    for stage in gate:
        metadata.update(stage.card_metadata(stage.settings_in(config)))
    notes = "".join(f"{note}\n" for note in report.notes.values())
    figures = "\n\n".join(f"![{path.removeprefix('images/').removesuffix('.png')}]({path})" for path in images)
    where = config.hub.repo_id or report.dataset
    generated = ", ".join(f"{name} {n}" for name, n in report.rows_by_strategy.items() if name != "seed") or "none"
    budget = report.budget
    problem = report.problem
    partial = f"\n**Partial:** {problem}.\n" if problem else ""
    seeds_are = ("on top, as given (`strategy` is `seed`; their answers are the seed file's or the model's)."
                 if config.include_seeds else "not rows: `include_seeds` is off.")
    return f"""---
{yaml.safe_dump(metadata, sort_keys=False)}---

# Synthetic instruction dataset (germinate run `{config.run_id}`)

{report.rows} instruction-response pairs grown with germinate from {report.seeds} seed tasks
(`{config.seeds.name}`) by the **{config.strategy_label}** strategy with the model(s)
{", ".join(f"`{m}`" for m in report.models) or "-"}, then filtered and chosen for diversity:

- **{report.rows - report.seed_rows} generated** ({generated}), of {budget.max_records} asked for;
- **{report.seed_rows} seed tasks**, {seeds_are}
{partial}
## How it was made

{strategy_table(report)}
Budget: {budget.max_llm_calls} LLM calls ({report.llm_calls} used), {budget.max_records} generated rows.
Quality gate: {", ".join(stage.name for stage in gate) or "none"}.
{notes}{pairs}
{stage_table(report)}
Every dropped record is kept with its reason in the run's `stages/*/rejected-*.parquet`.

<details><summary>The run's settings</summary>

```yaml
{_settings(config)}```
</details>

## Diversity

{describe_metrics(report.metrics)} (embeddings: {config.embedding.model}).

{figures}

## Columns

`instruction`, `input`, `output`, and `messages` (the same pair as chat turns, for TRL's `SFTTrainer`);
each row's provenance (strategy, seed_id, parent_id, hop, operation; AIDE: topic, attribute, persona; TCIA:
task_type, basic_query, constraints; GLAN: field, discipline, subject, sessions, concepts; prompt hash, model)
and quality (reflection_score: the instruction's relevance to its seed; quality_score and quality_critique:
the judge's view of the answer; draft_output, draft_score and draft_critique: the answer the judge revised,
when the revision scored higher; cluster: its k-means cluster in diversity selection).

```python
from datasets import load_dataset

rows = load_dataset("{where}", split="train")
```
"""
