"""The run report (report.json) and the dataset card (dataset/README.md)."""

from __future__ import annotations

from typing import Any

import yaml

import pyarrow as pa

from germinate.config import RunConfig
from germinate.metrics import Metrics
from germinate.records import SCHEMA, Record, to_table
from germinate.stats import StageStats


def build_report(
    config: RunConfig,
    stages: list[StageStats],
    strategies: dict[str, dict[str, Any]],
    records: list[Record],
    metrics: Metrics,
    dataset_dir: str,
    wall_seconds: float,
) -> dict[str, Any]:
    return {
        "run_id": config.run_id,
        "strategy": config.strategy_label,
        "strategies": strategies,
        "models": sorted({r.model for r in records if r.model}),
        "dataset": dataset_dir,
        "rows": len(records),
        "dataset_bytes": to_table(records).nbytes,
        "wall_seconds": round(wall_seconds, 2),
        "llm_calls": sum(s.llm_calls for s in stages),
        "budget": config.budget.model_dump(),
        "stages": [s.to_dict() for s in stages],
        "metrics": metrics.to_dict(),
    }


_HF_DTYPES = {pa.float64(): "float64"}  # Arrow calls it "double"; the Hub's card format wants float64


def _feature(field: pa.Field) -> dict[str, str]:
    if pa.types.is_list(field.type):
        return {"name": field.name, "list": _HF_DTYPES.get(field.type.value_type, str(field.type.value_type))}
    return {"name": field.name, "dtype": _HF_DTYPES.get(field.type, str(field.type))}


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "n>1M"


def describe_metrics(m: dict[str, Any]) -> str:
    return (
        f"mean pairwise cosine distance {m['mean_distance']:.3f}, {m['clusters_covered']}/{m['clusters']} "
        f"k-means clusters of the candidates covered, distinct bigrams {m['distinct_bigrams']:.2f}, "
        f"mean cosine to the nearest seed {m['seed_similarity']:.3f}, kept {m['rows']}/{m['generated']}"
    )


def dataset_card(config: RunConfig, report: dict[str, Any]) -> str:
    metadata = {
        "language": ["en"],
        "license": "other",
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(report["rows"])],
        "tags": ["synthetic", "germinate", *config.strategies],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "dataset_info": {
            "features": [_feature(f) for f in SCHEMA],
            "splits": [{"name": "train", "num_bytes": report["dataset_bytes"], "num_examples": report["rows"]}],
        },
    }
    rows = "\n".join(
        f"| {s['stage']} | {s['records_in']} | {s['kept']} | "
        f"{', '.join(f'{k}: {v}' for k, v in s['dropped'].items()) or '-'} | {s['llm_calls']} |"
        for s in report["stages"]
    )
    return f"""---
{yaml.safe_dump(metadata, sort_keys=False)}---

# Synthetic instruction dataset (germinate run `{config.run_id}`)

Generated with germinate from {config.seeds.name} using the
**{config.strategy_label}** strategy and the model(s) {", ".join(report["models"]) or "-"}.

| stage | in | kept | dropped | LLM calls |
|---|---|---|---|---|
{rows}

Budget: {report["budget"]["max_llm_calls"]} LLM calls, {report["budget"]["max_records"]} rows.
Diversity: {describe_metrics(report["metrics"])}.
Rows: {report["rows"]}. Columns: instruction, input, output, each row's provenance
(strategy, seed_id, parent_id, hop, operation; AIDE: topic, attribute, persona; TCIA: task_type,
basic_query, constraints; GLAN: field, discipline, subject, sessions, concepts; prompt hash, model) and quality
(reflection_score: the instruction's relevance to its seed; quality_score and quality_critique: the
judge's view of the answer; cluster: its k-means cluster in diversity selection).
"""
