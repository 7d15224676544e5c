"""GLAN (arXiv 2402.13064): instructions from a taxonomy of knowledge, not from seeds.

For each discipline of the taxonomy (taxonomy/), the LLM lists subjects (name,
level, subtopics); for each subject, a syllabus of class sessions with their key
concepts. Homework questions are then asked for samples of key concepts: 1-5 from
one session, or 2-5 spanning two sessions, with the syllabus up to those sessions
as context. The respond stage answers them like any instruction.
"""

from __future__ import annotations

import asyncio
import functools
import random
from itertools import combinations
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, create_model

from germinate.budget import Allowance, allocate
from germinate.executor import Emit
from germinate.generators import STAGE, Strategy, fault
from germinate.prompts import Prompt, combine_hashes
from germinate.records import Record, record_id
from germinate.settings import Section
from germinate.stage import Context
from germinate.taxonomy import DEFAULT as TAXONOMY_FILE
from germinate.taxonomy import Discipline, load_taxonomy, select

NAME_CHARS, CONCEPT_CHARS, MAX_CONCEPTS, MAX_SUBTOPICS = 60, 40, 4, 4
SINGLE_SESSION, SPANNING = (1, 5), (2, 5)  # concepts per question, from one session / spanning two
Short = Annotated[str, Field(max_length=CONCEPT_CHARS)]
Draw = tuple[tuple[int, ...], tuple[str, ...]]  # (session indices, key concepts)


@functools.cache
def subjects_schema(count: int) -> type[BaseModel]:
    subject = create_model(
        "Subject",
        name=(str, Field(min_length=1, max_length=NAME_CHARS)),
        level=(Literal["beginner", "intermediate", "advanced"], ...),
        subtopics=(list[Short], Field(min_length=1, max_length=MAX_SUBTOPICS)),
    )
    return create_model("Subjects", subjects=(list[subject], Field(min_length=1, max_length=count)))


@functools.cache
def syllabus_schema(count: int) -> type[BaseModel]:
    session = create_model(
        "Session",
        title=(str, Field(max_length=NAME_CHARS)),
        key_concepts=(list[Short], Field(min_length=1, max_length=MAX_CONCEPTS)),
    )
    return create_model("Syllabus", sessions=(list[session], Field(min_length=2, max_length=count)))


SUBJECTS = Prompt(
    "You are an expert teacher of $discipline ($field, $sub_field). List up to $count subjects a student "
    "should learn in this discipline, each with its level (beginner, intermediate or advanced) and a few subtopics."
)
SYLLABUS = Prompt(
    "You are an expert teacher of $discipline. Write a syllabus for the $level course \"$subject\" "
    "(subtopics: $subtopics): up to $count class sessions in teaching order, each with a short title and its "
    "key concepts, a few words each."
)
QUESTION = Prompt(
    "You are teaching the $level course \"$subject\" in $discipline. The course so far:\n$syllabus\n\n"
    "Write one homework question for your students that needs these key concepts to solve: $concepts. "
    "The question must be self-contained (include any data it needs) and answerable in writing. "
    "Write only the question."
)


def concept_sets(sessions: list[list[str]], chosen: tuple[int, ...]) -> list[tuple[str, ...]]:
    """Every set of key concepts a question on the chosen session(s) may need: 1-5 from one
    session, or 2-5 spanning two sessions with at least one concept from each."""
    if len(chosen) == 1:
        concepts = list(dict.fromkeys(sessions[chosen[0]]))
        low, high = SINGLE_SESSION
        return [c for n in range(low, high + 1) for c in combinations(concepts, n)]
    first, second = (list(dict.fromkeys(sessions[i])) for i in chosen)
    second = [c for c in second if c not in first]
    low, high = SPANNING
    return [
        c for n in range(low, high + 1) for c in combinations(first + second, n)
        if set(c) & set(first) and set(c) & set(second)
    ]


def sample_concepts(sessions: list[list[str]], count: int, rng: random.Random) -> list[Draw]:
    """`count` draws of (sessions, concepts) with distinct concept sets: each draw picks one session or
    two (evenly), then a concept set of them not drawn before. Fewer when the syllabus has fewer."""
    options = [(i,) for i in range(len(sessions))] + list(combinations(range(len(sessions)), 2))
    remaining = {chosen: concept_sets(sessions, chosen) for chosen in options}
    draws, drawn = [], set()
    while len(draws) < count:
        open_ = [chosen for chosen, sets in remaining.items() if sets]
        if not open_:
            break
        single = [c for c in open_ if len(c) == 1]
        spanning = [c for c in open_ if len(c) == 2]
        kind = rng.choice([k for k in (single, spanning) if k])
        chosen = rng.choice(kind)
        concepts = remaining[chosen].pop(rng.randrange(len(remaining[chosen])))
        if frozenset(concepts) not in drawn:  # sessions may share a concept
            drawn.add(frozenset(concepts))
            draws.append((chosen, concepts))
    return draws


class GLANConfig(Section):
    taxonomy: Path = Field(TAXONOMY_FILE, description="fields/sub-fields/disciplines")
    fields: list[str] = Field([], description="taxonomy slice: only these fields (empty: all)")
    disciplines: list[str] = Field([], description="taxonomy slice: only these disciplines (empty: all)")
    subjects: int = Field(2, ge=1, le=20, description="subjects listed per discipline")
    sessions: int = Field(4, ge=2, le=20, description="class sessions per subject's syllabus")
    questions: int = Field(4, ge=1, description="homework questions per subject")


class GLAN(Strategy):
    name = "glan"
    section = "glan"
    Settings = GLANConfig
    prompts_hash = combine_hashes(SUBJECTS.hash, SYLLABUS.hash, QUESTION.hash)

    def __init__(self, context: Context, record_cost: int):
        super().__init__(context, record_cost)
        self.question_cost = 1 + record_cost  # write + downstream
        self.subject_cost = 1 + self.question_cost  # a syllabus and at least one question
        self.unit_cost = 1 + self.subject_cost  # a subjects list, then one subject

    def check(self) -> None:
        self._slice()

    def _slice(self) -> list[Discipline]:
        taxonomy = load_taxonomy(self.settings.taxonomy)
        return select(taxonomy, self.settings.fields, self.settings.disciplines, str(self.settings.taxonomy))

    def units(self, seeds: list[Record], calls: int, rows: int) -> list[Discipline]:
        return self.affordable(self._slice(), calls, rows)

    async def grow(self, discipline: Discipline, allowance: Allowance, emit: Emit) -> None:
        """Subjects, then each subject's syllabus and questions; a subject's questions are handed on
        in subject order once they are written."""
        if allowance.records < 1 or allowance.calls < 1:
            return
        wanted = min(self.settings.subjects, (allowance.calls - 1) // self.subject_cost, allowance.records)
        schema = subjects_schema(self.settings.subjects)
        tokens = 32 + self.settings.subjects * (NAME_CHARS + 40 + MAX_SUBTOPICS * (CONCEPT_CHARS + 8))
        [listed] = await self.llm.generate([self.request(
            SUBJECTS, self.random_seed, schema, tokens, discipline=discipline.name, field=discipline.field,
            sub_field=discipline.sub_field, count=self.settings.subjects,
        )])
        if not listed.ok:
            return  # a failed call, counted in the stage's stats; nothing was made to drop
        subjects = list({s.name.strip(): s for s in listed.parsed.subjects if s.name.strip()}.values())[:wanted]
        if not subjects:
            return
        # The subjects are written at once, each within its share of what is left; their records, and
        # what the later stages take for them, are paid from the discipline's allowance.
        shares = zip(allocate(allowance.calls, len(subjects)), allocate(allowance.records, len(subjects)))
        written = [asyncio.ensure_future(self._subject(discipline, subject, calls, records))
                   for subject, (calls, records) in zip(subjects, shares)]
        try:
            for subject in written:
                emit(*await subject)
        finally:  # a failed shard stops them too
            for subject in written:
                subject.cancel()

    async def _subject(self, discipline: Discipline, subject, calls: int, records: int):
        """The subject's syllabus and its questions, within `calls` and `records`: (kept, rejected)."""
        if records < 1 or calls < 1:
            return [], []
        tokens = 32 + self.settings.sessions * (NAME_CHARS + 24 + MAX_CONCEPTS * (CONCEPT_CHARS + 8))
        [syllabus] = await self.llm.generate([self.request(
            SYLLABUS, self.random_seed, syllabus_schema(self.settings.sessions), tokens, discipline=discipline.name,
            level=subject.level, subject=subject.name, subtopics=", ".join(subject.subtopics),
            count=self.settings.sessions,
        )])
        if not syllabus.ok:
            return [], []
        sessions = syllabus.parsed.sessions
        concepts = [[c.strip() for c in s.key_concepts if c.strip()] for s in sessions]
        rng = random.Random(f"{self.random_seed}:{discipline.name}:{subject.name}")
        count = min(self.settings.questions, (calls - 1) // self.question_cost, records)
        draws = sample_concepts(concepts, count, rng)
        outline = [f"{i + 1}. {s.title}: {', '.join(concepts[i])}" for i, s in enumerate(sessions)]
        requests = [
            self.request(
                QUESTION, self.random_seed, level=subject.level, subject=subject.name, discipline=discipline.name,
                syllabus="\n".join(outline[: max(chosen) + 1]), concepts=", ".join(picked),  # the course so far
            )
            for chosen, picked in draws
        ]
        written = await self.llm.generate(requests)
        kept, rejected = [], []
        for (chosen, picked), result in zip(draws, written):
            record = self.written(
                result,
                id=record_id("glan", discipline.name, subject.name, *chosen, *picked),
                field=discipline.field,
                discipline=discipline.name,
                subject=subject.name,
                sessions=[sessions[i].title for i in chosen],
                concepts=list(picked),
            )
            problem = fault(record, result)
            if problem is None:
                kept.append(record)
                continue
            rejected.append(record.dropped(STAGE, *problem))
        return kept, rejected
