"""The embedding worker on a GPU, as a run uses it: texts/s at the default settings, and whether a
text's vector depends on the texts it is embedded with. For a lent GPU machine (`make install`, then
`pip install -e .` with a CUDA torch where the machine's image has none):

  python bench/embed_gpu.py [--texts 100000] [--batch-sizes 256,1024]

For each batch size: texts/s through the worker (germinate.embed.Embedder: tokenising, batching,
the pipe and the model, what a run waits for) and of the model's encoder called in this process (the
same batches without the worker), so the gap says what the feeding costs. Then, at the default
settings, the same texts embedded in reverse order and a few alone: the largest change of a vector
(0 where the promise "a vector is a function of its text alone" holds). Goal (issue 19): 30,000
texts/s through the worker on an H200-class GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed import made_texts  # noqa: E402  (texts made like the bench server's)

from germinate.embed import Embedder, _local  # noqa: E402
from germinate.settings import EmbeddingConfig  # noqa: E402


def rate(encode, texts: list[str]) -> float:
    start = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - start)


def in_process(encoder, texts: list[str]) -> None:
    for together in encoder.encode(texts):
        for _ in together:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=100_000)
    parser.add_argument("--batch-sizes", default="", help="comma-separated; default: the worker's default only")
    args = parser.parse_args()
    texts = made_texts(args.texts)
    sizes = [int(size) for size in args.batch_sizes.split(",") if size] or [None]
    for size in sizes:
        config = EmbeddingConfig(batch_size=size)
        worker = Embedder(config)
        worker.vectors_sync(["the model is loaded"])
        through_worker = rate(worker.vectors_sync, texts)  # a worker without a cache: every text is encoded
        encoder = _local(config)
        alone = rate(lambda batch: in_process(encoder, batch), texts)
        print(f"batch {encoder.batch_size:>5} ({encoder.where}): worker {through_worker:>9,.0f} texts/s, "
              f"encoder in process {alone:>9,.0f} texts/s", flush=True)
    default = Embedder(EmbeddingConfig())
    sample = texts[:5000]
    together = default.vectors_sync(sample)
    reverse = default.vectors_sync(sample[::-1])[::-1]
    single = np.stack([default.vectors_sync([text])[0] for text in sample[::500]])
    print(f"batch independence at the default settings: reverse order max change "
          f"{np.abs(reverse - together).max():.2e}, alone max change {np.abs(single - together[::500]).max():.2e}")


if __name__ == "__main__":
    main()
