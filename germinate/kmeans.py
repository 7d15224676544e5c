"""Spherical k-means with FAISS, on the GPU when there is one.

Shared by semantic dedup and diversity selection. With a GPU build of FAISS and
a visible GPU, training and the assignment search run there (FAISS's `gpu=True`
k-means puts its index on every GPU); otherwise on the CPU. Same results either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# FAISS trains on at most this many points per centroid (a random sample, its default):
# the centroids barely move past it, and it is what keeps a million vectors fast.
MAX_POINTS_PER_CENTROID = 256
# Seeds come from k-means++ on a sample: FAISS's random seeding left well-separated clusters
# merged (100 planted clusters, k=100: objective 0.195 against 0.160 with k-means++).
SEED_POINTS_PER_CENTROID, SEED_MAX_POINTS = 30, 20_000
# Below this much work (points x centroids) FAISS runs on one thread: its other OpenMP threads
# cost more than they share out, spinning against numpy's between the calls (selection's choice
# of k on 2 cores: 2.5 s with them, 1.2 s without).
ONE_THREAD_WORK = 1 << 20


def gpus() -> int:
    import faiss

    return faiss.get_num_gpus()


@dataclass
class Clusters:
    centroids: np.ndarray  # (k, d), unit vectors
    assignments: np.ndarray  # (n,) cluster of each vector
    similarities: np.ndarray  # (n,) cosine of each vector to its centroid

    @property
    def objective(self) -> float:
        """Spherical k-means objective: mean (1 - cosine to the assigned centroid); lower is better."""
        return float(np.mean(1.0 - self.similarities))

    def members(self) -> list[np.ndarray]:
        """Indices of each cluster's vectors, in input order."""
        order = np.argsort(self.assignments, kind="stable")
        bounds = np.searchsorted(self.assignments[order], np.arange(len(self.centroids) + 1))
        return [order[bounds[c] : bounds[c + 1]] for c in range(len(self.centroids))]


def _squared_distances(sample: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.maximum(2.0 - 2.0 * (sample @ centres.T), 0.0)  # unit vectors: |a - b|^2 = 2 - 2 a.b


def _kmeans_plus_plus(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ seeding on a sample: each next centre is the best of a few candidates
    drawn with probability proportional to their squared distance from the centres so far."""
    rng = np.random.default_rng(seed)
    count = min(len(vectors), max(k, min(SEED_MAX_POINTS, SEED_POINTS_PER_CENTROID * k)))
    sample = vectors[np.sort(rng.choice(len(vectors), count, replace=False))]
    trials = 2 + int(np.log(k))
    chosen = [int(rng.integers(count))]
    # float64: the draw's probabilities must sum to 1 within 1e-8
    distance = _squared_distances(sample, sample[chosen])[:, 0].astype(np.float64)
    for _ in range(1, k):
        total = distance.sum()
        if total <= 0:  # fewer distinct points than centres
            chosen.append(int(rng.integers(count)))
            continue
        candidates = rng.choice(count, trials, p=distance / total)
        options = np.minimum(distance[:, None], _squared_distances(sample, sample[candidates]))
        best = int(options.sum(axis=0).argmin())
        chosen.append(int(candidates[best]))
        distance = options[:, best]
    return np.ascontiguousarray(sample[chosen], dtype=np.float32)


def spherical_kmeans(vectors: np.ndarray, k: int, seed: int = 0, niter: int = 20) -> Clusters:
    """Cluster unit vectors by cosine. k is capped at the number of vectors."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    k = max(1, min(k, len(vectors)))
    kmeans = faiss.Kmeans(
        vectors.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        gpu=gpus() > 0,
        max_points_per_centroid=MAX_POINTS_PER_CENTROID,
        min_points_per_centroid=1,  # only sets when FAISS prints a "too few points" warning; small runs are fine
        verbose=False,
    )
    threads = faiss.omp_get_max_threads()
    if len(vectors) * k < ONE_THREAD_WORK:
        faiss.omp_set_num_threads(1)
    try:
        kmeans.train(vectors, init_centroids=_kmeans_plus_plus(vectors, k, seed))
        similarities, assignments = kmeans.index.search(vectors, 1)  # inner product index: cosine
    finally:
        faiss.omp_set_num_threads(threads)
    return Clusters(kmeans.centroids, assignments[:, 0].astype(np.int64), similarities[:, 0])
