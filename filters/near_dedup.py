"""Near dedup, online: MinHash over word n-grams in an LSH index that grows. A record whose
estimated Jaccard similarity with a kept one reaches the threshold is dropped; records come in the
run's fixed order, seeds first, so the first of a group is the one kept."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pydantic import Field

from germinate.filters.dedup import duplicate
from germinate.records import Record, normalize, show
from germinate.settings import StageSettings
from germinate.stage import Context, Outcome, Stage

if TYPE_CHECKING:
    from datasketch import MinHash


def shingles(text: str, n: int) -> set[bytes]:
    words = normalize(text).split()
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


@functools.lru_cache(maxsize=None)
def _empty(num_perm: int) -> MinHash:
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=1)


@functools.lru_cache(maxsize=65536)  # every shard meets the seeds first
def signature(text: str, ngram: int, num_perm: int) -> MinHash:
    from datasketch import MinHash

    # The permutations drawn once: a MinHash draws its own from the seed, 4 times the cost of hashing a
    # record's shingles.
    empty = _empty(num_perm)
    found = MinHash(num_perm=num_perm, seed=1, permutations=empty.permutations, scheme=empty.scheme)
    found.update_batch(list(shingles(text, ngram)))
    return found


class NearDedupConfig(StageSettings):
    threshold: float = Field(0.7, gt=0, le=1, description="Jaccard similarity of word n-gram shingles")
    ngram: int = Field(2, ge=1, le=10, description="words per shingle")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")


class NearDedup(Stage):
    name = "near_dedup"
    default_place = 40
    section = "quality.near_dedup"
    Settings = NearDedupConfig
    ordered = True

    @classmethod
    def warm(cls, settings: NearDedupConfig) -> None:
        # Imported while a run is checked, not with the module: datasketch brings scipy (0.6 s), which
        # every command (the config is made from the filters' modules) would pay.
        import datasketch  # noqa: F401

    def __init__(self, context: Context):
        super().__init__(context)
        from datasketch import MinHashLSH

        self.index = MinHashLSH(threshold=self.settings.threshold, num_perm=self.settings.num_perm)
        self.signatures = {}  # id of a kept record -> its MinHash

    async def run(self, records: list[Record]) -> Outcome:
        kept, rejected = [], []
        for record in records:
            found = signature(show(record), self.settings.ngram, self.settings.num_perm)
            similar = [(found.jaccard(self.signatures[key]), key) for key in self.index.query(found)]
            best, twin = max(similar, default=(0.0, ""))
            if best >= self.settings.threshold:
                rejected.append(duplicate(record, self.name, twin, f"jaccard {best:.2f}"))
                continue
            if record.id not in self.signatures:
                self.index.insert(record.id, found)
                self.signatures[record.id] = found
            kept.append(record)
        return kept, rejected
