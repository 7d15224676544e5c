"""GLAN's taxonomy of human knowledge and capabilities: fields -> sub-fields -> disciplines.

`taxonomy.yaml` beside this file is the curated one; `germinate taxonomy build|extend`
writes the same YAML with an LLM (taxonomy/builder.py), and a user can add a node by hand.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from germinate.errors import UserError, describe_error

DEFAULT = Path(str(files(__name__).joinpath("taxonomy.yaml")))  # shipped as package data

Name = Field(min_length=1, max_length=80)


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name

    @field_validator("name")
    @classmethod
    def _stripped(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("a name must not be blank")
        return name.strip()


class SubField(Node):
    disciplines: list[str] = Field(min_length=1)


class KnowledgeField(Node):
    sub_fields: list[SubField] = Field(min_length=1)


class Taxonomy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fields: list[KnowledgeField] = Field(min_length=1)

    @field_validator("fields")
    @classmethod
    def _unique_disciplines(cls, fields: list[KnowledgeField]) -> list[KnowledgeField]:
        counts = Counter(d for f in fields for s in f.sub_fields for d in s.disciplines)
        repeated = [name for name, n in counts.items() if n > 1]
        if repeated:
            raise ValueError(f"discipline '{repeated[0]}' appears {counts[repeated[0]]} times; names must be unique")
        return fields


@dataclass(frozen=True)
class Discipline:
    field: str
    sub_field: str
    name: str


def parse_taxonomy(data: object, where: str) -> Taxonomy:
    try:
        return Taxonomy.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{where}: {describe_error(exc.errors()[0])}") from None


def load_taxonomy(path: Path) -> Taxonomy:
    """Read and check a taxonomy file; a fault names the file and where in it."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such taxonomy file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_taxonomy(data, str(path))


def dump_taxonomy(taxonomy: Taxonomy) -> str:
    header = (
        "# GLAN taxonomy of human knowledge and capabilities: fields -> sub-fields -> disciplines.\n"
        "# Check it with `germinate taxonomy check FILE`; add a node by hand anywhere.\n"
    )
    return header + yaml.safe_dump(taxonomy.model_dump(), sort_keys=False, allow_unicode=True)


def disciplines(taxonomy: Taxonomy) -> list[Discipline]:
    return [Discipline(f.name, s.name, d) for f in taxonomy.fields for s in f.sub_fields for d in s.disciplines]


def select(taxonomy: Taxonomy, fields: list[str], names: list[str], where: str) -> list[Discipline]:
    """A slice of the taxonomy: disciplines of the named fields and/or the named disciplines
    (either list empty: no restriction from it). An unknown name is an error, not an empty run."""
    every = disciplines(taxonomy)
    known = {"fields": {d.field for d in every}, "disciplines": {d.name for d in every}}
    for key, wanted in (("fields", fields), ("disciplines", names)):
        unknown = [name for name in wanted if name not in known[key]]
        if unknown:
            raise UserError(f"glan.{key}: '{unknown[0]}' is not in {where}")
    return [d for d in every if (not fields or d.field in fields) and (not names or d.name in names)]
