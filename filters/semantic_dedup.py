"""Semantic dedup (SemDeDup), on the whole set: spherical k-means on the embeddings, then within each
cluster an item whose cosine to a kept one exceeds 1 - eps is dropped. Of a group, the seed is kept,
then the answer the judge scored higher, then the one farther from its cluster's centroid, which
SemDeDup found keeps the less prototypical, more informative example."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from germinate.filters.dedup import duplicate, rank
from germinate.kmeans import spherical_kmeans
from germinate.records import Record, show
from germinate.settings import StageSettings
from germinate.stage import Outcome, Stage

BLOCK = 1024  # rows of a cluster compared at once: bounds memory to BLOCK x cluster size


def semantic_duplicates(
    vectors: np.ndarray, ranks: list[tuple], eps: float, clusters: int, seed: int = 0
) -> dict[int, tuple[int, float]]:
    """SemDeDup on unit vectors: {index: (index of the kept vector it duplicates, cosine)}.

    Within each k-means cluster, items are put in keep order; an item whose cosine to any
    earlier item exceeds 1 - eps is dropped, and points (through the earlier item, if
    that one was dropped too) to the kept one. Work is the sum of squared cluster sizes.
    """
    found = spherical_kmeans(vectors, clusters, seed=seed)
    duplicates: dict[int, tuple[int, float]] = {}
    for members in found.members():
        order = sorted(members.tolist(), key=lambda i: (ranks[i], float(found.similarities[i])))
        block_vectors = vectors[order]
        for start in range(0, len(order), BLOCK):
            cosines = block_vectors[start : start + BLOCK] @ block_vectors.T
            # only earlier items count: mask each row from its own position on
            rows = np.arange(cosines.shape[0])
            cosines[np.arange(cosines.shape[1])[None, :] >= (start + rows)[:, None]] = -np.inf
            nearest = cosines.argmax(axis=1)
            best = cosines[rows, nearest]
            for row in np.flatnonzero(best > 1.0 - eps):
                position = start + row
                earlier = int(nearest[row])
                root = order[earlier]
                while root in duplicates:  # earlier items are decided first: follow to the kept one
                    root = duplicates[root][0]
                duplicates[order[position]] = (root, float(best[row]))
    return duplicates


class SemanticDedupConfig(StageSettings):
    eps: float = Field(0.05, gt=0, lt=1, description="drop an item whose cosine to a kept one exceeds 1 - eps")
    cluster_size: int = Field(500, ge=2, description="mean k-means cluster size: bounds the pairwise work")


class SemanticDedup(Stage):
    name = "semantic_dedup"
    default_place = 60
    section = "quality.semantic_dedup"
    Settings = SemanticDedupConfig
    whole_set = True
    compares_vectors = True

    async def run(self, records: list[Record]) -> Outcome:
        if not records:
            return [], []
        vectors = await self.context.vectors([show(r) for r in records])
        clusters = max(1, round(len(records) / self.settings.cluster_size))
        found = semantic_duplicates(vectors, [rank(r) for r in records], self.settings.eps, clusters,
                                    self.config.random_seed)
        kept = [r for i, r in enumerate(records) if i not in found]
        rejected = [duplicate(records[i], self.name, records[j].id, f"cosine {cosine:.3f}")
                    for i, (j, cosine) in sorted(found.items())]
        return kept, rejected
