"""Diversity selection, kMQ ("Diversify and Conquer", arXiv 2409.08239): k-means on the
embeddings, the row budget split across clusters, and inside each cluster a sample
weighted by quality. Records not chosen are rejected as `not_selected`, with their cluster.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from pydantic import Field

from germinate.kmeans import Clusters, spherical_kmeans
from germinate.records import Record, show
from germinate.settings import StageSettings
from germinate.stage import Outcome, Stage


MIN_CLUSTER = 4  # points, on average, in a cluster of a k that choose_k tries
# k-means runs, the best kept, for each k up to FEW_CLUSTERS that choose_k tries: with few clusters,
# one start stuck in a poor optimum ranks its k too low; with many, the silhouette averages it out.
K_STARTS, FEW_CLUSTERS = 3, 16


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of unit vectors under cosine distance (scikit-learn's `silhouette_score`, whose
    import alone took 0.85 s of a run's end): per point, (b - a) / max(a, b), with a its mean distance
    to the rest of its cluster and b that to the nearest other cluster; 0 for a point alone."""
    distances = 1.0 - points @ points.T
    order = np.argsort(labels, kind="stable")
    clusters, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    to_cluster = np.add.reduceat(distances[:, order], starts, axis=1)  # (point, cluster): summed distance
    own = np.searchsorted(clusters, labels)
    rows = np.arange(len(points))
    alone = sizes[own] == 1
    a = to_cluster[rows, own] / np.maximum(sizes[own] - 1, 1)
    means = to_cluster / sizes
    means[rows, own] = np.inf
    b = means.min(axis=1)
    scores = np.where(alone, 0.0, (b - a) / np.maximum(np.maximum(a, b), 1e-12))
    return float(scores.mean())


def choose_k(vectors: np.ndarray, budget: int, sample: int, seed: int = 0) -> int:
    """The k of best silhouette (cosine) over powers of two, on a sample of the points."""
    rng = np.random.default_rng(seed)
    points = vectors[rng.choice(len(vectors), min(sample, len(vectors)), replace=False)]
    # A silhouette over clusters of a point or two says little, and their k-means is the grid's
    # dearest: every k tried leaves clusters of MIN_CLUSTER points on average.
    grid = [k for k in (2**i for i in range(1, 12)) if k <= min(budget, len(points) // MIN_CLUSTER)]
    if not grid:
        return 1
    scores = {}
    for k in grid:
        starts = K_STARTS if k <= FEW_CLUSTERS else 1
        tries = (spherical_kmeans(points, k, seed=seed + start) for start in range(starts))
        labels = min(tries, key=lambda found: found.objective).assignments
        if len(set(labels.tolist())) > 1:
            scores[k] = silhouette(points, labels)
    return max(scores, key=scores.get) if scores else 1


def split_budget(sizes: list[int], budget: int, how: str) -> list[int]:
    """Rows per cluster, never more than a cluster has. Proportional: largest remainders;
    equal: the same share each, what small clusters cannot use going to the others."""
    budget = min(budget, sum(sizes))
    if not budget:  # nothing to choose from
        return [0] * len(sizes)
    if how == "proportional":
        exact = [budget * s / sum(sizes) for s in sizes]
        shares = [int(x) for x in exact]
        by_remainder = sorted(range(len(sizes)), key=lambda c: shares[c] - exact[c])
        for c in by_remainder[: budget - sum(shares)]:
            shares[c] += 1
        return shares
    shares = [0] * len(sizes)
    open_ = [c for c in range(len(sizes)) if sizes[c]]
    left = budget
    while left and open_:
        each = max(1, left // len(open_))
        for c in list(open_):
            give = min(each, sizes[c] - shares[c], left)
            shares[c] += give
            left -= give
            if shares[c] == sizes[c]:
                open_.remove(c)
            if not left:
                break
    return shares


def weighted_sample(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` indices without replacement, each drawn with probability proportional to its
    weight (Efraimidis-Spirakis keys: u ** (1 / w), keep the largest)."""
    keys = rng.random(len(weights)) ** (1.0 / weights)
    return np.argsort(-keys, kind="stable")[:count]


def select_indices(
    vectors: np.ndarray, weights: np.ndarray, size: int, k: int, split: str, seed: int = 0,
    chosen: np.ndarray | None = None,
) -> tuple[np.ndarray, Clusters]:
    """kMQ on vectors: a boolean mask of what is chosen, and the clusters it drew from. `chosen` marks
    what is in already (the seeds that are rows); `size` more are split over the clusters' others."""
    found = spherical_kmeans(vectors, k, seed=seed)
    chosen = np.zeros(len(vectors), dtype=bool) if chosen is None else chosen.copy()
    members = [cluster[~chosen[cluster]] for cluster in found.members()]
    shares = split_budget([len(m) for m in members], size, split)
    rng = np.random.default_rng(seed)
    for cluster, share in zip(members, shares):
        chosen[cluster[weighted_sample(weights[cluster], share, rng)]] = True
    return chosen, found


class SelectConfig(StageSettings):
    pool: float = Field(
        3.0, ge=1, description="candidates generated per dataset row, from which the diverse subset is chosen"
    )
    clusters: int | None = Field(None, ge=1, description="k; default: best silhouette over a small grid")
    split: Literal["proportional", "equal"] = Field("proportional", description="how the rows are split across clusters")
    silhouette_sample: int = Field(2000, ge=10, description="points on which k is chosen")


class Select(Stage):
    """`budget.max_records` generated records spread over the clusters of their embeddings; deterministic
    per seed. Seeds that are rows (`include_seeds`) take part in the clustering and are all kept, on
    top."""

    name = "select"
    default_place = 70
    pool_setting = "pool"
    section = "quality.select"
    Settings = SelectConfig
    whole_set = True
    compares_vectors = True

    async def run(self, records: list[Record]) -> Outcome:
        if not records:
            return [], []
        vectors = await self.context.vectors([show(r) for r in records])
        size, seed = self.config.budget.max_records, self.config.random_seed
        k = self.settings.clusters or choose_k(vectors, size, self.settings.silhouette_sample, seed)
        scores = np.array([np.nan if r.quality_score is None else r.quality_score for r in records], dtype=np.float64)
        # Quality weighs when there is any; a record without a score weighs as the average one.
        weights = np.ones(len(records)) if np.isnan(scores).all() else np.nan_to_num(scores, nan=np.nanmean(scores))
        seeds = np.array([r.strategy == "seed" for r in records])
        chosen, found = select_indices(vectors, weights, size, k, self.settings.split, seed, seeds)
        kept, rejected = [], []
        for i, record in enumerate(records):
            cluster = int(found.assignments[i])
            record = dataclasses.replace(record, cluster=cluster)
            if chosen[i]:
                kept.append(record)
            else:
                rejected.append(record.dropped(self.name, "not_selected", f"cluster {cluster} of {len(found.centroids)}"))
        return kept, rejected
