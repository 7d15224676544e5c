"""The embedded model's speed (SmolLM2-135M, the shipped Q4_1 GGUF, in-process on torch): calls/s and
tokens/s with N requests decoded together, with a sampled token's rows through torch's 4-bit kernel
(as runs use it) against the float product for every row (the baseline, the same weights read as
float32). Both backends stay loaded in this process and take turns, round by round; the script prints
the medians and the median of the per-round ratios.

The requests are a run's kinds, half of them judgements with a JSON schema: a system message, a
task, up to 96 tokens.

    python bench/embedded.py [--in-flight 4 16 32] [--requests 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import germinate.llm.transformers_backend as embedded  # noqa: E402
from germinate.judge import Rubric  # noqa: E402
from germinate.llm.base import Request, json_schema  # noqa: E402
from germinate.llm.gguf import default_model_path  # noqa: E402
from germinate.prompts import SYSTEM  # noqa: E402

TOPICS = ["rivers", "prime numbers", "bread", "sorting a list", "the moon", "tax forms", "chess", "volcanoes"]
VERDICT = json_schema(Rubric("bench", {"relevance": "on topic"}).schema)


def requests(count: int, salt: int) -> list[tuple[Request, dict | None]]:
    """`count` distinct requests; `salt` makes a round's requests its own (nothing is cached here, but
    the same prompts twice would make the rounds alike rather than typical)."""
    made = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        judged = i % 2 == 1
        if judged:
            ask = f"Task: write a short poem about {topic}, number {salt}-{i}.\n\nAssess the task: a critique, a score"
        else:
            ask = f"Write one new task about {topic} for an assistant ({salt}-{i})."
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ask}]
        made.append((Request(messages, max_tokens=96, seed=salt * 1000 + i), VERDICT if judged else None))
    return made


async def measure(backend, in_flight: int, count: int, salt: int) -> tuple[float, float]:
    """calls/s and completion tokens/s of `count` requests, at most `in_flight` at once."""
    gate = asyncio.Semaphore(in_flight)

    async def one(request, schema):
        async with gate:
            return await backend.complete(request, schema)

    start = time.perf_counter()
    done = await asyncio.gather(*(one(*r) for r in requests(count, salt)))
    wall = time.perf_counter() - start
    return count / wall, sum(c.completion_tokens for c in done) / wall


def loaded(four_bit: bool, rows: int):
    """A backend, loaded; with four_bit False no layer is packed (the float product for every row)."""
    packed = embedded._packed
    if not four_bit:
        embedded._packed = lambda layer: None
    try:
        backend = embedded.TransformersBackend(default_model_path(), rows=rows)
        asyncio.run(backend.complete(*requests(1, 0)[0]))
    finally:
        embedded._packed = packed
    return backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = max(args.in_flight)
    backends = {"4-bit": loaded(True, rows), "float": loaded(False, rows)}
    print(f"model {default_model_path().name}, "
          f"{args.requests} requests per round, {args.rounds} rounds, baseline: float rows")
    for in_flight in args.in_flight:
        calls = {name: [] for name in backends}
        tokens = {name: [] for name in backends}
        for round_ in range(args.rounds):
            order = list(backends) if round_ % 2 == 0 else list(backends)[::-1]  # alternate who goes first
            for name in order:
                c, t = asyncio.run(measure(backends[name], in_flight, args.requests, salt=round_ + 1))
                calls[name].append(c)
                tokens[name].append(t)
        ratio = statistics.median(a / b for a, b in zip(calls["4-bit"], calls["float"]))
        print(f"in flight {in_flight:3d}: " + "; ".join(
            f"{name} {statistics.median(calls[name]):.2f} calls/s, {statistics.median(tokens[name]):.0f} tokens/s"
            for name in backends) + f"; 4-bit/float calls/s {ratio:.2f}")
    for backend in backends.values():
        asyncio.run(backend.close())


if __name__ == "__main__":
    main()
