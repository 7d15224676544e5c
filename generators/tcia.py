"""TCIA (arXiv 2508.20374): task-centric instruction augmentation.

Each seed is decomposed into a task type, a basic query and its constraints. A
breadth-first search then explores constraint sets around the seed's own: add a
constraint from a pool (the seeds' constraints and a shipped library, retrieved
by embedding similarity), remove one, or replace one with its most similar pool
constraint. The basic query never changes, which keeps every state on the
seed's task. k of the K states found are written as natural instructions, each
checked constraint by constraint and refined with what it missed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import yaml
from pydantic import BaseModel, Field, create_model

from germinate.budget import Allowance, Reservation
from germinate.errors import UserError
from germinate.executor import Emit
from germinate.generators import STAGE, Strategy, fault, parse_instruction
from germinate.llm import Result
from germinate.llm.base import paid_by
from germinate.prompts import Prompt, combine_hashes
from germinate.records import Record, record_id, show
from germinate.settings import DATA_DIR, Section
from germinate.stage import Context

Category = Literal["content", "numerical", "style_tone", "format", "language", "input_placeholder"]
TaskType = Literal[
    "coding", "math", "writing", "question_answering", "summarization", "classification", "extraction",
    "rewriting", "brainstorming", "reasoning", "advice", "general",
]
CATEGORIES: tuple[str, ...] = get_args(Category)
TASK_TYPES: tuple[str, ...] = get_args(TaskType)
MOVES = ("add", "remove", "replace")
QUERY_CHARS, CONSTRAINT_CHARS, MAX_SEED_CONSTRAINTS = 160, 80, 4


@dataclass(frozen=True, order=True)
class Constraint:
    category: str
    text: str

    def __str__(self) -> str:
        return f"{self.category}: {self.text}"


class SeedConstraint(BaseModel):
    category: Category
    text: str = Field(max_length=CONSTRAINT_CHARS)


class Decomposition(BaseModel):
    task_type: TaskType
    basic_query: str = Field(max_length=QUERY_CHARS, description="the core request, without its constraints")
    constraints: list[SeedConstraint] = Field(max_length=MAX_SEED_CONSTRAINTS)


@functools.cache
def checklist(count: int) -> type[BaseModel]:
    """The verification schema: one yes/no per constraint, in order."""
    return create_model("Checklist", **{f"constraint_{i + 1}": (Literal["yes", "no"], ...) for i in range(count)})


DECOMPOSE = Prompt(
    "Split this task into its basic query (the core request, stated plainly) and its constraints "
    "(requirements on content, numbers, style or tone, format, language, or the input it works on). "
    "Also name its task type.\n\nTask:\n$task"
)
COMPOSE = Prompt(
    "Basic query: $query\nConstraints:\n$constraints\n$given\n"
    "Write one natural, self-contained instruction for an AI assistant that asks for the basic query "
    "and states every constraint above. Include any data the task needs. Write only the instruction."
)
VERIFY = Prompt(
    "Instruction:\n$instruction\n\nFor each numbered constraint, answer yes if the instruction clearly "
    "asks for it and no if it does not:\n$constraints"
)
REFINE = Prompt(
    "Instruction:\n$instruction\n\nIt does not yet state these constraints:\n$missing\n\n"
    "Rewrite the instruction so that it keeps its request and everything it already asks, and also "
    "states the missing constraints. Write only the instruction."
)


def load_library(path: Path) -> dict[str, list[Constraint]]:
    """The shipped constraint library: task type -> category -> constraints (data/constraints.yaml)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the constraint library ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected task type -> category -> list of constraints")
    library = {}
    for task_type, categories in data.items():
        if task_type not in TASK_TYPES:
            raise UserError(f"{path}: unknown task type '{task_type}' (one of {', '.join(TASK_TYPES)})")
        if not isinstance(categories, dict) or set(categories) - set(CATEGORIES):
            raise UserError(f"{path}: '{task_type}' must map categories ({', '.join(CATEGORIES)}) to lists")
        for category, texts in categories.items():
            if not isinstance(texts, list):
                raise UserError(f"{path}: '{task_type}.{category}' must be a list of constraints")
        library[task_type] = [
            Constraint(category, str(text)) for category, texts in categories.items() for text in texts or []
        ]
    return library


@dataclass(frozen=True)
class State:
    constraints: frozenset[int]  # indices into the seed's pool
    depth: int
    move: str | None = None  # the move that made this state from its parent
    parent: frozenset[int] | None = None


@dataclass
class Pool:
    """A seed's constraints first, then those retrieved for it; `similarity` is their cosine matrix."""

    constraints: list[Constraint]
    similarity: np.ndarray

    def most_similar(self, index: int, exclude: frozenset[int]) -> int | None:
        for other in np.argsort(-self.similarity[index], kind="stable"):
            if other != index and other not in exclude:
                return int(other)
        return None


def move(state: State, kind: str, pool: Pool, max_constraints: int, rng: random.Random) -> frozenset[int] | None:
    """One move of the search; None when it does not apply to the state."""
    current = sorted(state.constraints)
    if kind == "add":
        unused = [i for i in range(len(pool.constraints)) if i not in state.constraints]
        if not unused or len(current) >= max_constraints:
            return None
        return state.constraints | {rng.choice(unused)}
    if not current:
        return None
    chosen = rng.choice(current)
    if kind == "remove":
        return state.constraints - {chosen}
    replacement = pool.most_similar(chosen, state.constraints)
    return None if replacement is None else (state.constraints - {chosen}) | {replacement}


def search(start: frozenset[int], pool: Pool, states: int, moves: int, max_constraints: int, rng: random.Random):
    """Breadth-first from the seed's constraint set; every move m times from each state, until K
    unique sets. Returns the states found besides the start (which is the seed itself)."""
    root = State(start, 0)
    seen = {start}
    found: list[State] = []
    queue = deque([root])
    while queue and len(seen) < states:
        state = queue.popleft()
        for kind in MOVES:
            for _ in range(moves):
                constraints = move(state, kind, pool, max_constraints, rng)
                if constraints is None or constraints in seen or len(seen) >= states:
                    continue
                seen.add(constraints)
                child = State(constraints, state.depth + 1, kind, state.constraints)
                found.append(child)
                queue.append(child)
    return found


def retrieve(vectors: np.ndarray, own: list[Constraint], candidates: list[Constraint], size: int) -> Pool:
    """The seed's own constraints plus the `size` candidates closest to its basic query; `vectors`
    embeds the query, then the constraints, own first."""
    ranked = np.argsort(-(vectors[1 + len(own):] @ vectors[0]), kind="stable")[:size]
    chosen = own + [candidates[i] for i in ranked]
    chosen_vectors = np.concatenate([vectors[1 : 1 + len(own)], vectors[1 + len(own):][ranked]])
    return Pool(chosen, chosen_vectors @ chosen_vectors.T)


def given(record: Record) -> str:
    """The seed's input travels with every state; the instruction is written knowing it."""
    return f"The task comes with this input (do not repeat it):\n{record.input}\n" if record.input else ""


def numbered(constraints: list[Constraint]) -> str:
    return "\n".join(f"{i + 1}. {c.text}" for i, c in enumerate(constraints))


class TCIAConfig(Section):
    states: int = Field(16, ge=2, le=10_000, description="K: unique constraint sets at which the search stops")
    moves: int = Field(2, ge=1, le=20, description="m: times each operation (add, remove, replace) is tried per state")
    samples: int = Field(4, ge=1, description="k: states sampled per seed and written as instructions")
    pool: int = Field(40, ge=1, description="constraints retrieved from the pool for a seed, by similarity")
    max_constraints: int = Field(5, ge=1, le=20, description="an add move never grows a set past this")
    refine_tries: int = Field(1, ge=0, le=5, description="R: rewrites naming the constraints the check found missing")
    library: Path = Field(DATA_DIR / "constraints.yaml", description="task type -> category -> constraints")


class TCIA(Strategy):
    name = "tcia"
    section = "tcia"
    Settings = TCIAConfig
    prompts_hash = combine_hashes(DECOMPOSE.hash, COMPOSE.hash, VERIFY.hash, REFINE.hash)

    def __init__(self, context: Context, record_cost: int):
        super().__init__(context, record_cost)
        self.state_cost = 2 + record_cost  # compose + verify + downstream
        self.unit_cost = 1 + self.state_cost  # the decomposition and one state

    def check(self) -> None:
        load_library(self.settings.library)

    async def prepare(self, units: list[Record], allowances: list[Allowance]) -> None:
        """Every seed of the shard decomposed; the pool: their constraints and the library's."""
        self.decompositions = await self._decompose(units, allowances)
        self.library = load_library(self.settings.library)
        self.from_seeds: dict[str, list[Constraint]] = {}
        for parsed in self.decompositions.values():
            self.from_seeds.setdefault(parsed.task_type, []).extend(self._own(parsed))

    async def grow(self, seed: Record, allowance: Allowance, emit: Emit) -> None:
        # A seed whose decomposition failed grows nothing; the failed call is counted in the stage's stats.
        if seed.id in self.decompositions:
            emit(*await self._expand_seed(seed, allowance, self.decompositions[seed.id]))

    async def _decompose(self, seeds: list[Record], allowances: list[Allowance]) -> dict[str, Decomposition]:
        todo = [(s, a) for s, a in zip(seeds, allowances) if a.records >= 1 and a.calls >= 1 + self.state_cost]
        results = await asyncio.gather(*(self._decomposition(seed, allowance) for seed, allowance in todo))
        return {seed.id: result.parsed for (seed, _), result in zip(todo, results) if result.ok}

    async def _decomposition(self, seed: Record, allowance: Allowance) -> Result:
        """The seed's decomposition, paid by the seed's allowance (the shard's seeds are decomposed at once)."""
        tokens = 48 + QUERY_CHARS + MAX_SEED_CONSTRAINTS * (CONSTRAINT_CHARS + 32)
        with paid_by(allowance):
            [result] = await self.llm.generate(
                [self.request(DECOMPOSE, self.random_seed, Decomposition, tokens, task=show(seed))])
        return result

    @staticmethod
    def _own(parsed: Decomposition) -> list[Constraint]:
        own = [Constraint(c.category, c.text.strip()) for c in parsed.constraints if c.text.strip()]
        return list(dict.fromkeys(own))

    async def _expand_seed(self, seed: Record, allowance: Allowance, parsed: Decomposition):
        own = self._own(parsed)
        candidates = self.from_seeds.get(parsed.task_type, []) + self.library.get(parsed.task_type, [])
        candidates += self.library.get("general", [])
        candidates = [c for c in dict.fromkeys(candidates) if c not in own]
        query = parsed.basic_query.strip() or seed.instruction
        vectors = await self.vectors([query] + [c.text for c in own + candidates])
        pool = retrieve(vectors, own, candidates, self.settings.pool)
        rng = random.Random(f"{self.random_seed}:{seed.id}")
        found = search(frozenset(range(len(own))), pool, self.settings.states, self.settings.moves,
                       self.settings.max_constraints, rng)
        affordable = min(self.settings.samples, len(found), allowance.calls // self.state_cost, allowance.records)
        chosen = sorted(rng.sample(found, affordable), key=lambda s: (s.depth, sorted(s.constraints)))
        states = {}
        for state in chosen:
            constraints = [pool.constraints[i] for i in sorted(state.constraints)]
            record = Record(
                id=record_id(seed.id, "tcia", *map(str, constraints)),
                instruction=query,  # what a state without constraints asks; the others are written below
                input=seed.input,
                strategy=self.name,
                seed_id=seed.id,
                parent_id=seed.id,
                hop=state.depth,
                operation=state.move,
                task_type=parsed.task_type,
                basic_query=query,
                constraints=[str(c) for c in constraints],
                model=self.llm.model,
                prompt_hash=self.prompts_hash,
            )
            states[record.id] = (record, constraints)
        # Set aside: the refinements asked for while the states are checked must not take what the
        # states kept will cost the later stages (paid when the seed hands them on).
        with allowance.reserve(self.state_cost * len(chosen)) as reserved:
            return await self._write(states, reserved)

    async def _write(self, states: dict[str, tuple[Record, list[Constraint]]], reserved: Reservation):
        """Compose each state as an instruction, check every constraint, refine with the missing ones."""
        bare = [record for record, constraints in states.values() if not constraints]
        todo = [record for record, constraints in states.values() if constraints]
        written = await self.llm.generate(
            [self.request(COMPOSE, self.random_seed + r.hop, query=r.basic_query, given=given(r),
                          constraints="\n".join(f"- {c.text}" for c in states[r.id][1])) for r in todo]
        )
        kept, rejected, pending = bare, [], []
        for record, result in zip(todo, written):
            record = self._written(record, result)
            if record.drop_reason:
                rejected.append(record)
            else:
                pending.append(record)
        missing: dict[str, list[str]] = {}
        for round_ in range(self.settings.refine_tries + 1):
            if round_:
                affordable = [r for r in pending if reserved.extend(2)]  # refine + check again
                rejected += [self._missing(r, missing) for r in pending[len(affordable):]]
                refined = await self.llm.generate(
                    [self.request(REFINE, self.random_seed + round_, instruction=show(r),
                                  missing="\n".join(f"- {c}" for c in missing[r.id])) for r in affordable]
                )
                pending = [self._written(r, result, keep_on_failure=True) for r, result in zip(affordable, refined)]
            checks = await self.llm.generate(
                [self.request(VERIFY, self.random_seed + round_, checklist(len(states[r.id][1])),
                              16 + 24 * len(states[r.id][1]), instruction=show(r),
                              constraints=numbered(states[r.id][1])) for r in pending]
            )
            failing = []
            for record, result in zip(pending, checks):
                if not result.ok:
                    rejected.append(record.dropped(STAGE, "llm_error", result.error))
                    continue
                answers = result.parsed.model_dump().values()
                missing[record.id] = [c.text for c, a in zip(states[record.id][1], answers) if a == "no"]
                (failing if missing[record.id] else kept).append(record)
            pending = failing
        rejected += [self._missing(r, missing) for r in pending]  # still failing after R refinements
        position = {key: i for i, key in enumerate(states)}
        return sorted(kept, key=lambda r: position[r.id]), rejected

    @staticmethod
    def _missing(record: Record, missing: dict[str, list[str]]) -> Record:
        return record.dropped(STAGE, "constraints_missing", "; ".join(missing[record.id]))

    @staticmethod
    def _written(record: Record, result: Result, keep_on_failure: bool = False) -> Record:
        written = dataclasses.replace(
            record,
            instruction=parse_instruction(result.text) if result.ok else "",
            finish_reason=result.finish_reason,
            prompt_tokens=record.prompt_tokens + result.prompt_tokens,
            completion_tokens=record.completion_tokens + result.completion_tokens,
        )
        problem = fault(written, result)
        if problem is None:
            return written
        if keep_on_failure:  # a failed refinement leaves the last instruction to be checked again
            return record
        return written.dropped(STAGE, *problem)
