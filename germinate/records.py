"""The record: one candidate training example, and the one Arrow schema every Parquet file uses.

The schema is derived from the dataclass, so a field is declared in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import types
import typing
import unicodedata
from dataclasses import dataclass

import pyarrow as pa


@dataclass(slots=True)
class Record:
    id: str
    instruction: str
    input: str | None = None
    output: str | None = None
    # provenance
    strategy: str = "seed"
    seed_id: str | None = None
    parent_id: str | None = None
    hop: int = 0
    topic: str | None = None
    attribute: str | None = None
    operation: str | None = None
    persona: str | None = None
    # TCIA: the seed's task type and basic query (unchanged in every state), the state's constraints
    # as "category: text"; `hop` is the breadth-first depth, `operation` the move that made the state
    # (`parent_id` is the seed: every state is written from the seed's query, not from its parent's text)
    task_type: str | None = None
    basic_query: str | None = None
    constraints: list[str] | None = None
    # GLAN: where in the taxonomy and syllabus a question comes from
    field: str | None = None
    discipline: str | None = None
    subject: str | None = None
    sessions: list[str] | None = None
    concepts: list[str] | None = None
    model: str | None = None
    prompt_hash: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    metadata: str | None = None  # JSON of the seed file's other columns
    # quality
    reflection_score: float | None = None  # judge's relevance of the instruction to its seed
    difference_score: float | None = None  # persona children: how far they moved from the parent
    reflection_critique: str | None = None
    reflection_tries: int = 0
    quality_score: float | None = None  # judge's mean of correctness, helpfulness, instruction following
    quality_critique: str | None = None
    quality_revisions: int = 0  # revisions of the response tried with the critique
    # The other answers sampled for the instruction (generation.samples), for the judge to choose among;
    # the judge empties it (a run without the judge keeps them in its rows)
    other_outputs: list[str] | None = None
    # The answer the judge revised when a revision scored higher, or the worst of the answers sampled:
    # a preference pair with `output`
    draft_output: str | None = None
    draft_score: float | None = None
    draft_critique: str | None = None
    cluster: int | None = None  # diversity selection's k-means cluster
    duplicate_of: str | None = None  # the kept record this one duplicates (dedup stages)
    # why a record was dropped (rejected outputs only)
    drop_stage: str | None = None
    drop_reason: str | None = None
    drop_detail: str | None = None

    def dropped(self, stage: str, reason: str, detail: str | None = None) -> Record:
        return dataclasses.replace(self, drop_stage=stage, drop_reason=reason, drop_detail=detail)


def words(text: str, case: bool = False, punctuation: bool = False) -> list[str]:
    """The words of `text` (NFKC), by default without case or punctuation."""
    text = unicodedata.normalize("NFKC", text)
    if not case:
        text = text.casefold()
    if not punctuation:
        text = re.sub(r"[^\w\s]", " ", text)
    return text.split()


def normalize(text: str) -> str:
    """Case, whitespace and punctuation do not make a task new."""
    return " ".join(words(text))


def show(record: Record) -> str:
    """The task as a model sees it: the instruction and its input."""
    return record.instruction + (f"\n\nInput:\n{record.input}" if record.input else "")


def messages(record: Record) -> list[dict[str, str]]:
    """The chat form a trainer takes (TRL's SFTTrainer): the task as the user's turn, the answer as the assistant's."""
    return [{"role": "user", "content": show(record)}, {"role": "assistant", "content": record.output or ""}]


def record_id(*parts: object) -> str:
    """A deterministic id, so a resumed run names records as an uninterrupted one does."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


_ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _arrow_type(hint: object) -> tuple[pa.DataType, bool]:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):  # X | None
        (inner,) = [a for a in args if a is not type(None)]
        return _arrow_type(inner)[0], True
    if typing.get_origin(hint) is list:
        return pa.list_(_arrow_type(args[0])[0]), False
    return _ARROW_TYPES[hint], False


def _schema() -> pa.Schema:
    hints = typing.get_type_hints(Record)
    fields = []
    for f in dataclasses.fields(Record):
        arrow_type, nullable = _arrow_type(hints[f.name])
        fields.append(pa.field(f.name, arrow_type, nullable=nullable))
    return pa.schema(fields)


SCHEMA = _schema()


def to_table(records: list[Record]) -> pa.Table:
    columns = {name: [getattr(r, name) for r in records] for name in SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=SCHEMA)


# The dataset's files add the chat form beside instruction/input/output; stage files do without it.
MESSAGES = pa.field("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
DATASET_SCHEMA = SCHEMA.append(MESSAGES)


def to_dataset_table(records: list[Record]) -> pa.Table:
    return to_table(records).append_column(MESSAGES, pa.array([messages(r) for r in records], MESSAGES.type))


def from_table(table: pa.Table) -> list[Record]:
    """Records of a file a run wrote, an earlier version's too: a column it did not have takes its default."""
    return [Record(**row) for row in table.select([n for n in SCHEMA.names if n in table.column_names]).to_pylist()]
