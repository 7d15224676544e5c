"""Semantic dedup + k-means diversity selection: germinate (FAISS) against the same algorithm
on scikit-learn (MiniBatchKMeans, dense cosine per cluster), on clustered unit vectors.

    python bench/select_dedup.py                 # N = 100k, d = 384
    python bench/select_dedup.py --n 1000000     # the 1M-vector run (about 1.5 GB of vectors)

Prints the wall time of each, the ratio (baseline / germinate: above 1 means germinate is
faster), the spherical k-means objective of each (mean 1 - cosine to the assigned centroid;
lower is better) so quality is shown equal, the duplicates each found, and peak memory.
With a GPU build of FAISS and a GPU, germinate also runs with FAISS on the GPU.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import MiniBatchKMeans  # imported before any clock starts, as faiss is

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import germinate.kmeans  # noqa: E402
from germinate.filters.select import select_indices, split_budget, weighted_sample  # noqa: E402
from germinate.filters.semantic_dedup import semantic_duplicates  # noqa: E402
from germinate.kmeans import gpus  # noqa: E402


def clustered_vectors(n: int, d: int, centres: int, duplicate_share: float, seed: int) -> np.ndarray:
    """Points around random centres, and a share of near-copies of other points (what dedup finds)."""
    rng = np.random.default_rng(seed)
    vectors = np.empty((n, d), dtype=np.float32)
    labels = rng.integers(centres, size=n)
    middle = rng.normal(size=(centres, d)).astype(np.float32)
    for start in range(0, n, 100_000):  # in chunks: the noise of 1M x 384 at once would double the memory
        stop = min(n, start + 100_000)
        vectors[start:stop] = middle[labels[start:stop]] + rng.normal(scale=0.6, size=(stop - start, d))
    copies = rng.choice(n, int(n * duplicate_share), replace=False)
    vectors[copies] = vectors[rng.integers(n, size=len(copies))] + rng.normal(scale=0.01, size=(len(copies), d))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def objective(vectors: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    cosines = np.concatenate(
        [np.sum(vectors[s : s + 100_000] * centroids[labels[s : s + 100_000]], axis=1) for s in range(0, len(vectors), 100_000)]
    )
    return float(np.mean(1.0 - cosines))


def germinate_run(vectors, eps, dedup_k, select_k, size, seed):
    start = time.perf_counter()
    duplicates = semantic_duplicates(vectors, [()] * len(vectors), eps, dedup_k, seed)
    keep = np.setdiff1d(np.arange(len(vectors)), np.fromiter(duplicates, dtype=np.int64))
    chosen, found = select_indices(vectors[keep], np.ones(len(keep)), size, select_k, "proportional", seed)
    seconds = time.perf_counter() - start
    return seconds, len(duplicates), int(chosen.sum()), objective(vectors[keep], found.centroids, found.assignments)


def germinate_cpu_run(*args):
    """germinate with FAISS kept on the CPU, for the CPU-to-CPU ratio on a GPU machine too."""
    on_gpu = germinate.kmeans.gpus
    germinate.kmeans.gpus = lambda: 0
    try:
        return germinate_run(*args)
    finally:
        germinate.kmeans.gpus = on_gpu


def sklearn_run(vectors, eps, dedup_k, select_k, size, seed):
    start = time.perf_counter()
    labels = MiniBatchKMeans(dedup_k, random_state=seed, n_init=1, batch_size=4096).fit_predict(vectors)
    # the same rule as germinate's: an item is dropped when an earlier one of its cluster is too close
    kept_mask = np.ones(len(vectors), dtype=bool)
    for c in range(dedup_k):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:  # MiniBatchKMeans may leave a cluster empty at 1M points
            continue
        cosines = vectors[members] @ vectors[members].T  # dense, the whole cluster at once
        cosines[np.tril_indices(len(members))] = -np.inf  # only earlier items count
        kept_mask[members[cosines.max(axis=0) > 1.0 - eps]] = False
    keep = np.flatnonzero(kept_mask)
    model = MiniBatchKMeans(select_k, random_state=seed, n_init=1, batch_size=4096).fit(vectors[keep])
    members = [np.flatnonzero(model.labels_ == c) for c in range(select_k)]
    rng = np.random.default_rng(seed)
    chosen = sum(
        len(weighted_sample(np.ones(len(m)), share, rng))
        for m, share in zip(members, split_budget([len(m) for m in members], size, "proportional"))
    )
    seconds = time.perf_counter() - start
    return seconds, len(vectors) - len(keep), chosen, objective(vectors[keep], model.cluster_centers_, model.labels_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--cluster-size", type=int, default=500, help="semantic dedup: mean cluster size")
    parser.add_argument("--select-k", type=int, default=100)
    parser.add_argument("--select-share", type=float, default=0.1, help="rows selected, as a share of N")
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--skip-baseline", action="store_true", help="germinate only (e.g. the 1M memory check)")
    parser.add_argument("--centres", type=int, default=None, help="planted topics (default N / 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    centres = args.centres or max(10, args.n // 100)
    vectors = clustered_vectors(args.n, args.d, centres, duplicate_share=0.1, seed=args.seed)
    dedup_k = max(1, round(args.n / args.cluster_size))
    size = int(args.n * args.select_share)
    print(f"N={args.n:,} d={args.d} topics={centres:,} dedup clusters={dedup_k} select k={args.select_k} rows={size:,} "
          f"FAISS GPUs={gpus()}")
    runs = {"germinate CPU": germinate_cpu_run}
    if gpus():
        runs["germinate GPU"] = germinate_run
    if not args.skip_baseline:
        runs["scikit-learn"] = sklearn_run
    results = {}
    for name, run in runs.items():
        seconds, duplicates, chosen, obj = run(vectors, args.eps, dedup_k, args.select_k, size, args.seed)
        results[name] = seconds
        print(f"{name:>14}: {seconds:7.1f} s  duplicates {duplicates:,}  selected {chosen:,}  objective {obj:.4f}")
    for name in ("germinate CPU", "germinate GPU"):
        if name in results and "scikit-learn" in results:
            print(f"ratio (scikit-learn / {name}): {results['scikit-learn'] / results[name]:.2f}x")
    print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
