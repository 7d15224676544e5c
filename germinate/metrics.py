"""Diversity and relevance of a dataset's instructions, measured the same way for every run,
so runs (and strategies) can be compared: `germinate compare RUN_DIR...` and the run summary.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from pydantic import BaseModel, computed_field

from germinate.budget import EXPAND_STAGE
from germinate.embed import embed
from germinate.kmeans import Clusters, spherical_kmeans
from germinate.records import Record, show
from germinate.runs import Run


class Metrics(BaseModel):
    rows: int
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


def pool_clusters(vectors: np.ndarray) -> Clusters:
    """The reference clustering every measured dataset is counted against (about 4 per cluster, at most 64)."""
    return spherical_kmeans(vectors, max(2, min(64, len(vectors) // 4)))


def measure(
    rows: list[Record], vectors: np.ndarray, seed_vectors: np.ndarray, generated: int, clusters: Clusters
) -> Metrics:
    covered = set((vectors @ clusters.centroids.T).argmax(axis=1).tolist()) if len(vectors) else set()
    new = vectors[[r.strategy != "seed" for r in rows]] if len(vectors) else vectors
    similarity = float((new @ seed_vectors.T).max(axis=1).mean()) if len(new) and len(seed_vectors) else 0.0
    return Metrics(
        rows=len(rows),
        generated=generated,
        mean_distance=round(mean_pairwise_distance(vectors), 4),
        clusters_covered=len(covered),
        clusters=len(clusters.centroids),
        distinct_bigrams=round(distinct_bigrams([r.instruction for r in rows]), 4),
        seed_similarity=round(similarity, 4),
    )


Vectors = Callable[[list[str]], np.ndarray]


def run_metrics(run: Run, rows: list[Record], vectors: Vectors) -> Metrics:
    """A run's dataset against the clusters of everything its expansion produced (embedded while it ran)."""
    candidates = run.kept(EXPAND_STAGE) + run.rejected(EXPAND_STAGE)
    clusters = pool_clusters(vectors([show(r) for r in candidates]))
    return measure(rows, vectors([show(r) for r in rows]), vectors([show(r) for r in run.seeds()]),
                   len(candidates), clusters)


def compare_runs(runs: list[Run], model: str) -> dict[str, Metrics]:
    """Each run's dataset against the clusters of all the runs' datasets together."""
    rows, vectors, seeds = {}, {}, {}
    for run in runs:
        rows[run.root] = run.dataset()
        vectors[run.root] = embed([show(r) for r in rows[run.root]], model, run.embeddings_path)
        seeds[run.root] = embed([show(r) for r in run.seeds()], model, run.embeddings_path)
    clusters = pool_clusters(np.concatenate(list(vectors.values())))
    return {
        str(run.root): measure(
            rows[run.root], vectors[run.root], seeds[run.root],
            len(run.kept(EXPAND_STAGE)) + len(run.rejected(EXPAND_STAGE)), clusters,
        )
        for run in runs
    }
