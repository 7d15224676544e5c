"""Benchmark decontamination: a record whose instruction, input or output shares a run of `ngram`
words (13, as the GPT-3 and Llama 2 reports check) with a benchmark's prompt or answer is dropped,
its detail naming the benchmark, the item and the words they share. A seed that is a row is checked
too; being the user's own data, it is kept with a warning unless `drop_seeds`.

The benchmarks are read once per process into a sorted array of 64-bit n-gram hashes (8 bytes per
n-gram, and 4 for its item): a record is checked with one vectorised lookup, and a hit is confirmed
against the item's own words, so a hash collision never drops a record."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import Field, field_validator

from germinate.errors import UserError
from germinate.io import TABLE_SUFFIXES, table_rows
from germinate.records import Record, words
from germinate.settings import Section, StageSettings
from germinate.stage import Context, Filter

log = logging.getLogger(__name__)
# Columns a benchmark's prompts and answers are found in, unless it names its own.
COLUMNS = ["question", "prompt", "problem", "input", "instruction", "answer", "solution", "canonical_solution",
           "output", "text"]


class Benchmark(Section):
    path: str = Field(description="a file (.jsonl, .json, .csv, .parquet) or a Hugging Face dataset id")
    columns: list[str] = Field(default_factory=lambda: list(COLUMNS),
                               description="its columns that hold prompts or answers (those it has)")
    split: str = Field("test", description="a Hugging Face dataset's split")
    subset: str | None = Field(None, description="a Hugging Face dataset's configuration (e.g. 'main')")

    @property
    def name(self) -> str:
        return Path(self.path).name if self.is_file else self.path

    @property
    def is_file(self) -> bool:
        """A file (an existing one of another format gets the readers' clear error), else a dataset id."""
        return Path(self.path).suffix.lower() in TABLE_SUFFIXES or Path(self.path).is_file()


class DecontaminateConfig(StageSettings):
    benchmarks: list[Benchmark] = Field(
        default_factory=list, description="files or Hugging Face dataset ids (each a name, or {path, columns, split, "
        "subset}); the stage runs once one is named")
    ngram: int = Field(13, ge=4, le=50, description="words a record must share with a benchmark item to be dropped")
    case: bool = Field(False, description="tell upper from lower case (off: 'The' and 'the' are one word)")
    punctuation: bool = Field(False, description="count punctuation (off: 'x, y' and 'x y' are the same words)")
    drop_seeds: bool = Field(False, description="drop a seed row that shares text with a benchmark (off: kept, "
                                                "with a warning)")

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _named(cls, benchmarks: object) -> object:
        """A benchmark named alone is its path."""
        return [{"path": b} if isinstance(b, str) else b for b in benchmarks] if isinstance(benchmarks, list) else benchmarks

    @field_validator("benchmarks")
    @classmethod
    def _absolute(cls, benchmarks: list[Benchmark]) -> list[Benchmark]:
        """A file is found where the config was read (a Ray worker, or a resume, may run elsewhere)."""
        return [b.model_copy(update={"path": str(Path(b.path).resolve())}) if b.is_file else b for b in benchmarks]


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


# A run of words hashes as a polynomial of its words' own 64-bit hashes in MULTIPLIER (odd, so it has
# an inverse modulo 2**64): through prefix sums, every run of a text costs a few array operations.
MULTIPLIER = 0x9E3779B97F4A7C15
# MULTIPLIER**k and its inverse's, modulo 2**64, grown as texts need; one tuple, swapped whole (threads).
_power_tables = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def _powers_to(length: int) -> tuple[np.ndarray, np.ndarray]:
    global _power_tables
    powers, inverse = _power_tables
    if len(powers) < length:
        size, inverse_multiplier = max(length, 2 * len(powers)), pow(MULTIPLIER, -1, 2**64)
        grown, grown_inverse = [1], [1]
        for _ in range(size - 1):
            grown.append(grown[-1] * MULTIPLIER % 2**64)
            grown_inverse.append(grown_inverse[-1] * inverse_multiplier % 2**64)
        powers, inverse = _power_tables = np.array(grown, np.uint64), np.array(grown_inverse, np.uint64)
    return powers[:length], inverse[:length]


def ngram_hashes(tokens: list[str], n: int, vocabulary: dict[str, int], learn: bool = True) -> np.ndarray:
    """One 64-bit hash per run of `n` words (none when the text is shorter): for the run starting at
    word i, the sum of word_j * MULTIPLIER**(i+n-1-j). A word new to `vocabulary` is added to it, or,
    unless `learn` (a record's words: the benchmarks' vocabulary must not grow with every record a
    long-lived process checks), hashed as 0: no run with it is in a benchmark."""
    if len(tokens) < n:
        return np.empty(0, np.uint64)
    if learn:
        ids = np.array([vocabulary[w] if w in vocabulary else vocabulary.setdefault(w, _word_hash(w))
                        for w in tokens], np.uint64)
    else:
        ids = np.array([vocabulary.get(w, 0) for w in tokens], np.uint64)
    powers, inverse = _powers_to(len(tokens))
    prefix = np.cumsum(ids * inverse, dtype=np.uint64)  # sum of word_j * MULTIPLIER**-j up to each word
    windows = prefix[n - 1:] - np.concatenate(([np.uint64(0)], prefix[:-n]))
    return windows * powers[n - 1:]


@dataclass
class Item:
    benchmark: str
    place: str  # its file and line, or its dataset row
    text: str  # its words, normalised, each with a space on either side: " w1 w2 ... "

    def has(self, run: list[str]) -> bool:
        return f" {' '.join(run)} " in self.text


class Index:
    """Every benchmark item's n-gram hashes, sorted, with the item each came from."""

    def __init__(self, settings: DecontaminateConfig):
        self.settings = settings
        self.vocabulary: dict[str, int] = {}
        self.items: list[Item] = []
        hashes, owners = [], []
        for source in settings.benchmarks:
            before = len(self.items)
            for place, text in _texts(source):
                tokens = words(text, settings.case, settings.punctuation)
                found = ngram_hashes(tokens, settings.ngram, self.vocabulary)
                if len(found):
                    hashes.append(found)
                    owners.append(np.full(len(found), len(self.items), np.int32))
                    self.items.append(Item(source.name, place, f" {' '.join(tokens)} "))
            if len(self.items) == before:  # checking against it would check nothing
                raise UserError(f"quality.decontaminate.benchmarks: {source.name} has no text of {settings.ngram} "
                                f"words or more; lower quality.decontaminate.ngram, or name its columns")
        hashes = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.owners = (np.concatenate(owners) if owners else np.empty(0, np.int32))[order]
        # A bit per slot, 16 slots per n-gram: nearly every n-gram of a record that is no benchmark's is
        # turned away by one memory read, not a binary search of the whole array (4 times the reads).
        self.slot_bits = max(16, int(len(self.hashes) * 16).bit_length())
        self.bits = np.zeros(2 ** self.slot_bits // 8, np.uint8)
        slots = self.hashes >> np.uint64(64 - self.slot_bits)
        np.bitwise_or.at(self.bits, slots >> np.uint64(3), np.left_shift(1, slots & np.uint64(7)).astype(np.uint8))

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + self.owners.nbytes + self.bits.nbytes

    def shared(self, text: str) -> tuple[Item, str] | None:
        """The first benchmark item `text` shares `ngram` words or more with, and the words."""
        tokens = words(text, self.settings.case, self.settings.punctuation)
        found = ngram_hashes(tokens, self.settings.ngram, self.vocabulary, learn=False)
        if not len(found) or not len(self.hashes):
            return None
        slots = found >> np.uint64(64 - self.slot_bits)
        maybe = np.flatnonzero((self.bits[slots >> np.uint64(3)] >> (slots & np.uint64(7)).astype(np.uint8)) & 1)
        at = np.minimum(np.searchsorted(self.hashes, found[maybe]), len(self.hashes) - 1)
        hit = self.hashes[at] == found[maybe]
        n = self.settings.ngram
        for start, position in zip(maybe[hit].tolist(), at[hit].tolist()):
            run = tokens[start: start + n]
            while position < len(self.hashes) and self.hashes[position] == found[start]:
                item = self.items[self.owners[position]]
                if item.has(run):  # a hash collision is not a match
                    end = start + n  # the whole run of words they share, for the detail
                    while end < len(tokens) and item.has(tokens[start: end + 1]):
                        end += 1
                    return item, " ".join(tokens[start:end])
                position += 1
        return None


def _texts(source: Benchmark) -> list[tuple[str, str]]:
    """(where, text) of every prompt and answer of a benchmark."""
    rows = list(table_rows(Path(source.path), "benchmark")) if source.is_file else _hub_rows(source)
    present = [c for c in source.columns if any(isinstance(row, dict) and c in row for _, row in rows[:100])]
    if not present:
        raise UserError(f"quality.decontaminate.benchmarks: {source.name} has none of the columns "
                        f"{', '.join(source.columns)}; name its columns ({{path: ..., columns: [...]}})")
    return [(f"{place} ({column})", str(row[column])) for place, row in rows for column in present
            if isinstance(row, dict) and row.get(column) not in (None, "")]


def _hub_rows(source: Benchmark) -> list[tuple[str, dict]]:
    """A Hugging Face dataset's rows, through `datasets` (which caches what it downloads)."""
    where = f"quality.decontaminate.benchmarks: '{source.path}'"
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError(f"{where} is no file (.jsonl, .json, .csv, .parquet), so a Hugging Face dataset id, which "
                        "needs the datasets package: pip install datasets") from None
    try:
        rows = load_dataset(source.path, source.subset, split=source.split)
    except Exception as exc:  # the Hub unreachable, no such dataset, split or subset
        subset = f"subset {source.subset}, " if source.subset else ""
        raise UserError(f"quality.decontaminate.benchmarks: cannot load the Hugging Face dataset "
                        f"'{source.path}' ({subset}split {source.split}): {exc}") from None
    return [(f"{source.path} {source.split} row {i}", row) for i, row in enumerate(rows)]


_indexes: dict[str, Index] = {}
_building = threading.Lock()


def index_for(settings: DecontaminateConfig) -> Index:
    """One index per process and settings: a run's shards share it."""
    key = settings.model_dump_json()
    with _building:
        if key not in _indexes:
            _indexes[key] = Index(settings)
        return _indexes[key]


class Decontaminate(Filter):
    name = "decontaminate"
    default_place = 15  # once answered, before anything spends time on the record
    section = "quality.decontaminate"
    Settings = DecontaminateConfig

    @classmethod
    def switched_on_by(cls, settings: DecontaminateConfig) -> bool:
        return settings.enabled and bool(settings.benchmarks)

    @classmethod
    def note(cls, settings: DecontaminateConfig, dropped: Callable[[], list[Record]]) -> str:
        details = [record.drop_detail or "" for record in dropped()]
        removed = ", ".join(f"`{source.name}` {sum(f' with {source.name}: ' in d for d in details)}"
                            for source in settings.benchmarks)
        return (f"Checked against benchmarks (records dropped for sharing {settings.ngram} words with one of their "
                f"prompts or answers): {removed}.")

    @classmethod
    def check_inputs(cls, settings: DecontaminateConfig) -> None:
        index_for(settings)  # in the driver, before anything is written: a bad benchmark stops the run here

    def __init__(self, context: Context):
        super().__init__(context)
        self.index = index_for(self.settings)

    def check(self, record: Record) -> tuple[str, str | None] | None:
        for field in ("instruction", "input", "output"):
            hit = self.index.shared(getattr(record, field) or "")
            if hit is None:
                continue
            item, shared = hit
            detail = f"{field} shares '{shared}' with {item.benchmark}: {item.place}"
            if record.strategy == "seed" and not self.settings.drop_seeds:
                log.warning("seed %s %s (kept: quality.decontaminate.drop_seeds is off)", record.id, detail)
                return None
            return "contaminated", detail
        return None
