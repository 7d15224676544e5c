"""How fast a run's texts become vectors, and what the faster paths change. On a CPU machine and on
a lent GPU alike (the worker picks CUDA when there is one):

  python bench/embed.py [--texts 2000] [--run RUN_DIR] [--rounds 3]

Texts: a finished run's candidates (--run: what its semantic dedup and selection embed), or ones
made like the bench server's (bench/pipeline.py), instruction and input. For each path, texts/s:

  before    in this process, as germinate did before: batches of 16 rows padded to the power of two
            above their length, float32, torch on all cores but one
  float32   the embedding worker (germinate.embed.Embedder), precision float32
  default   the worker at the default settings (precision auto: bfloat16 where the hardware has it,
            else int8 on a CPU)

and, against `before`'s vectors: the largest change of a cosine between two texts, the SemDeDup
decisions at the default eps (the same items dropped?) and kMQ selection of a quarter of the texts
at the same k (the same items chosen? the chosen set's diversity, measured with `before`'s
vectors). Then a batch-independence check at the default settings: the texts embedded in reverse
order, and some of them alone, give the very same vectors. Rounds alternate; medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import sentence  # noqa: E402  (the bench server's words)

from germinate.embed import Embedder, _model_path  # noqa: E402
from germinate.filters.semantic_dedup import SemanticDedupConfig  # noqa: E402
from germinate.metrics import mean_pairwise_distance  # noqa: E402
from germinate.settings import EmbeddingConfig  # noqa: E402


def made_texts(count: int) -> list[str]:
    """Instructions with an input or not; one in five a near copy of another (a word or two changed),
    as a model's repeats are, for dedup to find."""
    rng = random.Random(0)
    texts: list[str] = []
    while len(texts) < count:
        if texts and rng.random() < 0.2:
            words = rng.choice(texts).split(" ")
            for _ in range(rng.randint(1, 2)):
                words[rng.randrange(len(words))] = sentence(rng, 1)[:-1].lower()
            texts.append(" ".join(words))
        else:
            texts.append(sentence(rng, rng.randint(6, 14)) + (f"\n\nInput:\n{sentence(rng, rng.randint(8, 20))}"
                                                               if rng.random() < 0.6 else ""))
    return texts


def run_texts(run_dir: Path, count: int) -> list[str]:
    from germinate.budget import EXPAND_STAGE
    from germinate.records import show
    from germinate.runs import Run

    run = Run(run_dir)
    return list(dict.fromkeys(show(r) for r in run.kept(EXPAND_STAGE) + run.rejected(EXPAND_STAGE)))[:count]


class Before:
    """germinate's encoder before this bench's paths: the baseline, kept here to measure against."""

    def __init__(self):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = SentenceTransformer(_model_path("all-MiniLM-L6-v2"), device=device)

    def vectors(self, texts: list[str], batch: int = 16) -> np.ndarray:
        import torch

        tokenizer, limit = self.model.tokenizer, self.model.max_seq_length
        buckets: dict[int, list[int]] = {}
        for i, ids in enumerate(tokenizer(texts, truncation=True, max_length=limit)["input_ids"]):
            buckets.setdefault(min(limit, 1 << max(4, (len(ids) - 1).bit_length())), []).append(i)
        out = np.zeros((len(texts), self.model.get_embedding_dimension()), dtype=np.float32)
        for length, members in buckets.items():
            for start in range(0, len(members), batch):
                rows = members[start : start + batch]
                features = tokenizer([texts[i] for i in rows] + [""] * (batch - len(rows)), padding="max_length",
                                     truncation=True, max_length=length, return_tensors="pt")
                with torch.inference_mode():
                    found = self.model({k: v.to(self.model.device) for k, v in features.items()})["sentence_embedding"]
                out[rows] = torch.nn.functional.normalize(found[: len(rows)], dim=1).float().cpu().numpy()
        return out


def timed(encode, texts: list[str]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = encode(texts)
    return len(texts) / (time.perf_counter() - start), vectors


def agreement(base: np.ndarray, other: np.ndarray) -> dict:
    from germinate.filters.select import select_indices
    from germinate.filters.semantic_dedup import semantic_duplicates

    n = len(base)
    pairs = np.abs(base @ base.T - other @ other.T).max()
    eps, clusters = SemanticDedupConfig().eps, max(1, n // SemanticDedupConfig().cluster_size)
    ranks = [(0,)] * n
    dropped = [set(semantic_duplicates(v, ranks, eps, clusters)) for v in (base, other)]
    same_drops = 1 - len(dropped[0] ^ dropped[1]) / max(1, len(dropped[0] | dropped[1]))
    size, k = n // 4, 32
    chosen = [select_indices(v, np.ones(n), size, k, "proportional")[0] for v in (base, other)]
    same_chosen = (chosen[0] & chosen[1]).sum() / size
    diversity = [mean_pairwise_distance(base[c]) for c in chosen]  # both measured with `before`'s vectors
    return {"max_cos_change": float(pairs), "dedup_dropped": (len(dropped[0]), len(dropped[1])),
            "dedup_same": same_drops, "select_same": float(same_chosen), "select_diversity": diversity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--run", type=Path, help="a finished run directory: embed its candidates")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    texts = run_texts(args.run, args.texts) if args.run else made_texts(args.texts)
    before = Before()
    workers = {"float32": EmbeddingConfig(precision="float32"), "default": EmbeddingConfig()}
    embedders = {name: Embedder(config) for name, config in workers.items()}
    for embedder in embedders.values():
        embedder.vectors_sync(["the model is loaded"])
    rates: dict[str, list[float]] = {"before": [], **{name: [] for name in workers}}
    vectors: dict[str, np.ndarray] = {}
    for round_ in range(args.rounds):
        batch = [f"{text} ({round_})" if round_ else text for text in texts]  # nothing cached from a last round
        rates["before"].append((found := timed(before.vectors, batch))[0])
        vectors.setdefault("before", found[1])
        for name, embedder in embedders.items():
            rates[name].append((found := timed(embedder.vectors_sync, batch))[0])
            vectors.setdefault(name, found[1])
    device = str(before.model.device)
    lengths = sorted(len(ids) for ids in before.model.tokenizer(texts)["input_ids"])
    print(f"{len(texts)} texts ({'run ' + str(args.run) if args.run else 'made like the bench server'}), tokens "
          f"median {lengths[len(lengths) // 2]}, p95 {lengths[int(0.95 * len(lengths))]}; {device}, "
          f"{os.cpu_count()} cores; {args.rounds} round(s), medians")
    print(f"{'path':<9} {'texts/s':>8} {'x before':>8}  agreement with before")
    base = statistics.median(rates["before"])
    for name, found in rates.items():
        rate = statistics.median(found)
        line = f"{name:<9} {rate:>8.0f} {rate / base:>8.2f}"
        if name != "before":
            a = agreement(vectors["before"], vectors[name])
            line += (f"  max cosine change {a['max_cos_change']:.4f}; SemDeDup dropped {a['dedup_dropped'][0]} / "
                     f"{a['dedup_dropped'][1]}, same decisions {a['dedup_same']:.3f}; kMQ same chosen "
                     f"{a['select_same']:.3f}, diversity {a['select_diversity'][0]:.4f} / {a['select_diversity'][1]:.4f}")
        print(line)
    default = embedders["default"]
    alone = all(np.array_equal(default.vectors_sync([text])[0], vectors["default"][i])
                for i, text in list(enumerate(texts))[::max(1, len(texts) // 50)])
    reverse = np.array_equal(default.vectors_sync(texts[::-1])[::-1], vectors["default"])
    print(f"batch independence at the default settings: reverse order {'same' if reverse else 'DIFFERENT'}, "
          f"alone {'same' if alone else 'DIFFERENT'}")
    print(json.dumps({name: statistics.median(r) for name, r in rates.items()}))


if __name__ == "__main__":
    main()
