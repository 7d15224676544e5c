"""Diversity and relevance of a dataset's instructions, measured the same way for every run,
so runs (and strategies) can be compared: `germinate compare RUN_DIR...` and the run summary.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
from pydantic import BaseModel, computed_field

from germinate.budget import EXPAND_STAGE
from germinate.embed import embed
from germinate.kmeans import Clusters, spherical_kmeans
from germinate.records import Record, show
from germinate.runs import Run


Vectors = Callable[[list[str]], np.ndarray]
SAMPLE = 256  # records, about, that a set larger than this is measured on
# Priorities below this are a set's sample when it has at least 80% of the records planned for it.
SAMPLE_AHEAD = 1.25


class Metrics(BaseModel):
    rows: int
    measured_on: int = 0  # rows the vector metrics saw: all of them, or a sample by id of SAMPLE
    generated: int  # records the expansion produced, seeds included, before any filter
    mean_distance: float  # mean pairwise cosine distance of the instructions: higher is more diverse
    clusters_covered: int  # clusters of the reference pool that the rows reach
    clusters: int
    distinct_bigrams: float  # distinct word bigrams / all word bigrams of the instructions
    seed_similarity: float  # mean cosine of each generated row to its nearest seed: higher is more on task

    @computed_field
    @property
    def kept_share(self) -> float:
        return round(self.rows / self.generated, 4) if self.generated else 0.0


def mean_pairwise_distance(vectors: np.ndarray) -> float:
    """1 - mean cosine over distinct pairs, in O(n): the sum of all dot products is |sum of vectors|^2."""
    n = len(vectors)
    if n < 2:
        return 0.0
    total = vectors.sum(axis=0, dtype=np.float64)
    return float(1.0 - (total @ total - n) / (n * (n - 1)))


def distinct_bigrams(texts: list[str]) -> float:
    grams = [pair for text in texts for words in [text.lower().split()] for pair in zip(words, words[1:])]
    return len(set(grams)) / len(grams) if grams else 0.0


def sample_rank(record: Record) -> float:
    """Where a record stands, 0 to 1, in every sample by id: the same in every run and resume."""
    return int(hashlib.sha1(record.id.encode()).hexdigest()[:12], 16) / 16**12


def sample_priority(record: Record, size: int) -> float:
    """How soon a record of a set of about `size` will be wanted by the metrics: below 1 if it will
    likely be in the set's sample, and lower the more likely; so records of sets of any size
    compare (embedding ahead takes the sample of each set first)."""
    return sample_rank(record) * size / SAMPLE


def wanted_ahead(records: list[Record], size: int, every: bool) -> list[tuple[float, str]]:
    """(priority, text) of the records, of a set of about `size`, whose vectors a run will want: every
    one when a stage compares them all, else those likely in the metrics' sample. Embedding the rest
    would take the cores the run itself needs (on 2 cores, longer than growing the set)."""
    ranked = ((sample_priority(record, size), record) for record in records)
    return [(priority, show(record)) for priority, record in ranked if every or priority < SAMPLE_AHEAD]


def sample(records: list[Record]) -> list[Record]:
    """About SAMPLE of `records` (all of them when there are no more): those ranked below SAMPLE/n.
    Embedding every row of a large set would take longer than growing it, and a mean over a
    few hundred is as good as over all for comparing runs."""
    if len(records) <= SAMPLE:
        return records
    return [r for r in records if sample_rank(r) < SAMPLE / len(records)]


def pool_clusters(vectors: np.ndarray) -> Clusters | None:
    """The reference clustering every measured dataset is counted against (about 4 per cluster, at most
    64); None when there is nothing to cluster (a budget too small to grow a record)."""
    return spherical_kmeans(vectors, max(2, min(64, len(vectors) // 4))) if len(vectors) else None


def measure(
    rows: list[Record], vectors: Vectors, seeds: list[Record], generated: int, clusters: Clusters | None
) -> Metrics:
    """`rows` measured on a sample of them, against a sample of the seeds."""
    measured = sample(rows)
    found = vectors([show(r) for r in measured])
    seed_vectors = vectors([show(r) for r in sample(seeds)])
    covered = set((found @ clusters.centroids.T).argmax(axis=1).tolist()) if len(found) and clusters else set()
    new = found[[r.strategy != "seed" for r in measured]] if len(found) else found
    similarity = float((new @ seed_vectors.T).max(axis=1).mean()) if len(new) and len(seed_vectors) else 0.0
    return Metrics(
        rows=len(rows),
        measured_on=len(measured),
        generated=generated,
        mean_distance=round(mean_pairwise_distance(found), 4),
        clusters_covered=len(covered),
        clusters=len(clusters.centroids) if clusters else 0,
        distinct_bigrams=round(distinct_bigrams([r.instruction for r in rows]), 4),
        seed_similarity=round(similarity, 4),
    )


def run_metrics(run: Run, rows: list[Record], vectors: Vectors) -> Metrics:
    """A run's dataset against the clusters of everything its expansion produced (embedded while it ran)."""
    candidates, seeds = run.kept(EXPAND_STAGE) + run.rejected(EXPAND_STAGE), run.seeds()
    vectors = _asked_at_once(vectors, [show(r) for r in sample(candidates) + sample(rows) + sample(seeds)])
    clusters = pool_clusters(vectors([show(r) for r in sample(candidates)]))
    return measure(rows, vectors, seeds, len(candidates), clusters)


def _asked_at_once(vectors: Vectors, texts: list[str]) -> Vectors:
    """`vectors` for these texts only, asked for in one go: one wait, and full batches."""
    found = vectors(texts)
    index = {text: i for i, text in enumerate(texts)}
    return lambda asked: found[[index[text] for text in asked]]


def compare_runs(runs: list[Run], model: str) -> dict[str, Metrics]:
    """Each run's dataset against the clusters of all the runs' datasets together."""
    datasets = {run.root: run.dataset() for run in runs}
    pooled = [embed([show(r) for r in sample(datasets[run.root])], model, run.embeddings_path) for run in runs]
    clusters = pool_clusters(np.concatenate(pooled))
    return {
        str(run.root): measure(datasets[run.root], lambda texts, run=run: embed(texts, model, run.embeddings_path),
                               run.seeds(), len(run.kept(EXPAND_STAGE)) + len(run.rejected(EXPAND_STAGE)), clusters)
        for run in runs
    }
