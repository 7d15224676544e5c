"""Dedup: exact (normalised text), near (MinHash LSH over word n-grams) and semantic
(SemDeDup: k-means on embeddings, then near duplicates within each cluster).

Each keeps one record per group and drops the others with `duplicate_of` set to
the kept record's id. Which one is kept: seeds first, then a higher quality score
when records have one, then (semantic) the one farther from its cluster centroid,
which SemDeDup found keeps the less prototypical, more informative example;
otherwise the earlier record.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata

import numpy as np

from germinate.config import NearDedupConfig, SemanticDedupConfig
from germinate.kmeans import spherical_kmeans
from germinate.records import Record, show

EXACT, NEAR, SEMANTIC = "exact_dedup", "near_dedup", "semantic_dedup"
BLOCK = 1024  # rows of a cluster compared at once: bounds memory to BLOCK x cluster size


def normalize(text: str) -> str:
    """Case, whitespace and punctuation do not make a task new."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def _rank(record: Record) -> tuple:
    """Sort key of which record of a group to keep (smaller first)."""
    quality = record.quality_score if record.quality_score is not None else float("-inf")
    return (record.strategy != "seed", -quality)


def _duplicate(record: Record, stage: str, of: Record, detail: str) -> Record:
    return dataclasses.replace(record, duplicate_of=of.id).dropped(stage, "duplicate", detail)


def _split(records: list[Record], duplicates: dict[int, tuple[int, str]], stage: str):
    """(kept, rejected) in input order, from {index: (index of the kept record, detail)}."""
    kept = [r for i, r in enumerate(records) if i not in duplicates]
    rejected = [_duplicate(records[i], stage, records[j], detail) for i, (j, detail) in sorted(duplicates.items())]
    return kept, rejected


def exact_dedup(records: list[Record]) -> tuple[list[Record], list[Record]]:
    first: dict[str, int] = {}
    duplicates = {}
    for i in sorted(range(len(records)), key=lambda i: _rank(records[i])):  # stable: ties keep input order
        key = normalize(show(records[i]))
        if key in first:
            duplicates[i] = (first[key], "same normalised text")
        else:
            first[key] = i
    return _split(records, duplicates, EXACT)


def shingles(text: str, n: int) -> set[bytes]:
    words = normalize(text).split()
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


def near_dedup(records: list[Record], config: NearDedupConfig) -> tuple[list[Record], list[Record]]:
    """Greedy over records in keep order: a record whose estimated Jaccard with an already
    kept one reaches the threshold is its duplicate; LSH finds the candidates."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
    signatures: dict[int, MinHash] = {}
    duplicates = {}
    for i in sorted(range(len(records)), key=lambda i: _rank(records[i])):
        signature = MinHash(num_perm=config.num_perm, seed=1)
        signature.update_batch(list(shingles(show(records[i]), config.ngram)))
        similar = [(signature.jaccard(signatures[j]), j) for j in lsh.query(signature)]
        best = max(similar, default=(0.0, -1), key=lambda pair: (pair[0], -pair[1]))
        if best[0] >= config.threshold:
            duplicates[i] = (best[1], f"jaccard {best[0]:.2f}")
        else:
            lsh.insert(i, signature)
            signatures[i] = signature
    return _split(records, duplicates, NEAR)


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


def semantic_dedup(
    records: list[Record], vectors: np.ndarray, config: SemanticDedupConfig, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    clusters = max(1, round(len(records) / config.cluster_size))
    found = semantic_duplicates(vectors, [_rank(r) for r in records], config.eps, clusters, seed)
    return _split(records, {i: (j, f"cosine {cos:.3f}") for i, (j, cos) in found.items()}, SEMANTIC)
