"""Build or extend a GLAN taxonomy with the LLM; the result is the same YAML as the curated one.

Building asks for fields, then the sub-fields of each, then the disciplines of each
sub-field (GLAN's human-in-the-loop step is a person editing the YAML afterwards).
Extending asks each sub-field for disciplines it does not have yet.
"""

from __future__ import annotations

import functools
from typing import Annotated

from pydantic import BaseModel, Field, create_model

from germinate.errors import UserError
from germinate.llm import LLM, Request
from germinate.prompts import Prompt
from germinate.taxonomy import KnowledgeField, SubField, Taxonomy

NAME_CHARS = 60

FIELDS = Prompt(
    "List $count broad fields of human knowledge and capabilities that people learn, from the sciences "
    "and engineering to the humanities, professional work and everyday life skills."
)
SUB_FIELDS = Prompt("List $count sub-fields of the field \"$field\" of human knowledge, each a short name.")
DISCIPLINES = Prompt(
    "List $count disciplines of \"$sub_field\" (in the field \"$field\"): concrete teachable subjects such as "
    "university courses or practical skill areas, each a short name.$known"
)


@functools.cache
def names(count: int) -> type[BaseModel]:
    return create_model(
        "Names", names=(list[Annotated[str, Field(max_length=NAME_CHARS)]], Field(min_length=1, max_length=count))
    )


def _request(prompt: Prompt, count: int, seed: int, **values: object) -> Request:
    return Request(prompt.messages(count=count, **values), schema=names(count),
                   max_tokens=16 + count * (NAME_CHARS + 4), temperature=0.7, seed=seed)


def _new(listed: list[str], taken: set[str]) -> list[str]:
    """Names not taken yet (case-insensitively); adds them to `taken`."""
    fresh = []
    for name in (n.strip() for n in listed):
        if name and name.lower() not in taken:
            taken.add(name.lower())
            fresh.append(name)
    return fresh


async def _ask(llm: LLM, requests: list[Request]) -> list[list[str]]:
    results = await llm.generate(requests)
    return [result.parsed.names if result.ok else [] for result in results]


async def build(
    llm: LLM, fields: list[str], field_count: int, sub_fields: int, disciplines: int, seed: int = 0
) -> Taxonomy:
    """A new taxonomy: the given fields (or `field_count` the LLM names), their sub-fields and disciplines."""
    taken: set[str] = set()
    if not fields:
        [fields] = await _ask(llm, [_request(FIELDS, field_count, seed)])
    fields = _new(fields, taken)
    subs = await _ask(llm, [_request(SUB_FIELDS, sub_fields, seed, field=f) for f in fields])
    subs = [_new(listed, taken) for listed in subs]
    pairs = [(f, s) for f, listed in zip(fields, subs) for s in listed]
    found = await _ask(
        llm, [_request(DISCIPLINES, disciplines, seed, field=f, sub_field=s, known="") for f, s in pairs]
    )
    tree: dict[str, list[SubField]] = {f: [] for f in fields}
    for (f, s), listed in zip(pairs, found):
        names_ = _new(listed, taken)
        if names_:
            tree[f].append(SubField(name=s, disciplines=names_))
    built = [KnowledgeField(name=f, sub_fields=s) for f, s in tree.items() if s]
    if not built:
        raise UserError(f"{llm.model}: named no new fields, sub-fields and disciplines; try a larger model")
    return Taxonomy(fields=built)


async def extend(llm: LLM, taxonomy: Taxonomy, disciplines: int, fields: list[str], seed: int = 0) -> Taxonomy:
    """The taxonomy with up to `disciplines` new ones per sub-field (of `fields`, or all)."""
    unknown = [name for name in fields if name not in {f.name for f in taxonomy.fields}]
    if unknown:
        raise UserError(f"--field: '{unknown[0]}' is not a field of the taxonomy")
    taken = {d.lower() for f in taxonomy.fields for s in f.sub_fields for d in s.disciplines}
    taken |= {n.name.lower() for f in taxonomy.fields for n in [f, *f.sub_fields]}
    pairs = [(f, s) for f in taxonomy.fields for s in f.sub_fields if not fields or f.name in fields]
    found = await _ask(llm, [
        _request(DISCIPLINES, disciplines, seed, field=f.name, sub_field=s.name,
                 known=f" It already has: {', '.join(s.disciplines)}. Name others.")
        for f, s in pairs
    ])
    grown = taxonomy.model_copy(deep=True)
    subs = {(f.name, s.name): s for f in grown.fields for s in f.sub_fields}
    for (f, s), listed in zip(pairs, found):
        subs[(f.name, s.name)].disciplines += _new(listed, taken)
    return grown
