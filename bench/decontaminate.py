"""Is benchmark decontamination fast and small enough for every record of a run? The stage's index
(a sorted array of 64-bit n-gram hashes, filters/decontaminate.py) against the obvious one, a Python
set of the same hashes, on the same texts: 100,000 benchmark items of about 80 words and 1,000,000
records of about 60 words (instruction and answer), 1 in 1,000 of which copies a run of 20 words from
an item.

For each: seconds to build the index, its memory (the growth of the process's peak RSS while it is
built, Linux only, and the bytes the index holds), records checked per second (the instruction and the output of each,
as the stage checks them) and the records found. The two are measured in alternate rounds.

    python bench/decontaminate.py [--items 100000] [--records 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from germinate.filters.decontaminate import DecontaminateConfig, Index, ngram_hashes, words

VOCABULARY = [f"w{i}" for i in range(30_000)]


def text(rng: random.Random, length: int) -> str:
    return " ".join(rng.choices(VOCABULARY, k=length))


class SetIndex:
    """The obvious index: every n-gram's hash in a Python set."""

    def __init__(self, settings: DecontaminateConfig, texts: list[str]):
        self.settings, self.vocabulary, self.hashes = settings, {}, set()
        for item in texts:
            self.hashes.update(ngram_hashes(words(item, False, False), settings.ngram, self.vocabulary).tolist())

    def shared(self, record: str) -> bool:
        found = ngram_hashes(words(record, False, False), self.settings.ngram, self.vocabulary)
        return any(h in self.hashes for h in found.tolist())


def _status_mb(field: str) -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) / 1024


def reset_peak() -> float:
    """The peak RSS starts again from the current one (Linux: clear_refs 5); returns the current RSS, MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS:")


def measure(kind: str, settings: DecontaminateConfig, items: list[str], records: list[tuple[str, str]]) -> dict:
    gc.collect()
    before = reset_peak()
    started = time.perf_counter()
    index = Index(settings) if kind == "array" else SetIndex(settings, items)
    built = time.perf_counter() - started
    grown = _status_mb("VmHWM:") - before
    started = time.perf_counter()
    found = sum(1 for instruction, output in records if index.shared(instruction) or index.shared(output))
    seconds = time.perf_counter() - started
    held = (index.nbytes if kind == "array"  # its hash arrays; the set's table and its int objects
            else sys.getsizeof(index.hashes) + sum(map(sys.getsizeof, index.hashes)))
    return {"build": built, "peak": grown, "held": held / 2**20, "rate": len(records) / seconds, "found": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(0)
    items = [text(rng, rng.randint(40, 120)) for _ in range(args.items)]
    records = []
    for i in range(args.records):
        output = text(rng, rng.randint(20, 60))
        if i % 1000 == 0:  # a copied run of 20 words
            source = items[rng.randrange(len(items))].split()
            output += " " + " ".join(source[:20])
        records.append((text(rng, rng.randint(8, 30)), output))
    with tempfile.TemporaryDirectory() as folder:
        bench = Path(folder) / "bench.jsonl"
        bench.write_text("".join(json.dumps({"question": item}) + "\n" for item in items))
        settings = DecontaminateConfig(benchmarks=[str(bench)])
        results: dict[str, list[dict]] = {"set": [], "array": []}
        for round_ in range(args.rounds):
            for kind in ("set", "array") if round_ % 2 == 0 else ("array", "set"):
                results[kind].append(measure(kind, settings, items, records))
                gc.collect()
    print(f"{args.items} benchmark items, {args.records} records, {args.rounds} round(s), medians")
    print(f"{'index':<24} {'build s':>8} {'peak MB':>8} {'held MB':>8} {'records/s':>10} {'found':>6}")
    median = {kind: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for kind, rows in results.items()}
    for kind, label in (("set", "Python set of hashes"), ("array", "sorted array (the stage)")):
        m = median[kind]
        print(f"{label:<24} {m['build']:>8.1f} {m['peak']:>8.0f} {m['held']:>8.0f} {m['rate']:>10.0f} {m['found']:>6.0f}")
    ratio = statistics.median(a["rate"] / s["rate"] for a, s in zip(results["array"], results["set"]))
    print(f"records/s, stage / set: {ratio:.2f}; memory held, set / stage: "
          f"{median['set']['held'] / median['array']['held']:.1f}x")


if __name__ == "__main__":
    main()
