"""Expansion strategies: one module each, behind one interface (`Strategy`), found by `strategies()`;
and the stage that answers what they write (respond.py).

A strategy's module holds all of it: its prompts, its settings section (`Settings`, in the run's
config under `section`) and its `Strategy` subclass. A module added here is found; a strategy in
another package is found through its entry point in the group `germinate.strategies`. The run's
config is made from the strategies found, so a strategy's module imports germinate.settings, never
germinate.config.

A strategy's share of the budget is split over its units (seeds; GLAN: disciplines),
and each unit grows records within its own allowance, handing them on as soon as they
are final, so they are answered and judged while the rest grows. Every strategy writes
the same Record schema and fills the provenance fields that apply to it.
"""

from __future__ import annotations

import random
import re
import sys
from abc import ABC, abstractmethod
from functools import cache
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from germinate.budget import EXPAND_STAGE, Allowance
from germinate.executor import Emit
from germinate.llm import Request, Result
from germinate.prompts import Prompt
from germinate.records import Record
from germinate.settings import Section
from germinate.stage import Context, Stage, discover, discover_with_plugins

if TYPE_CHECKING:
    from germinate.config import RunConfig

STAGE = EXPAND_STAGE
ENTRY_POINTS = "germinate.strategies"


class Strategy(ABC):
    name: ClassVar[str]  # as the config's `strategies` and the records' `strategy` name it
    section: ClassVar[str]  # the key of its settings in the run's config
    Settings: ClassVar[type[Section]]  # its settings section
    prompts_hash: ClassVar[str]  # of the templates its records went through: their provenance
    default_share: ClassVar[float] = 0.0  # of the budget, in a config that names no strategy
    unit_cost: int  # the fewest LLM calls that grow one record from a unit (set by each strategy)

    def __init__(self, context: Context, record_cost: int):
        """`context.llm` may be None to plan units only; `record_cost`: LLM calls a kept record without
        an answer still needs after expansion (paid from the unit's allowance when the record is kept)."""
        self.llm = context.llm
        self.vectors = context.vectors
        self.config = context.config
        self.settings = getattr(context.config, self.section)
        self.record_cost = record_cost
        self.random_seed = context.config.random_seed

    @classmethod
    def summary(cls) -> str:
        """What it does, in a line (of its class's or its module's docstring): its section's description."""
        return (cls.__doc__ or sys.modules[cls.__module__].__doc__ or cls.name).strip().splitlines()[0]

    def check(self) -> None:
        """Raise UserError for a fault in the strategy's own inputs (a library, a taxonomy),
        before the run directory is written."""

    def units(self, seeds: list[Record], calls: int, rows: int) -> Sequence[Any]:
        """What the budget is split over, in a fixed order. Most strategies grow from each seed."""
        return self.affordable(seeds, calls, rows)

    def affordable(self, units: Sequence[Any], calls: int, rows: int) -> list[Any]:
        """As many units as the budget can grow a record from each, drawn at random (fixed per run
        and strategy) and kept in their order: a small share goes to fewer units, not to nothing."""
        count = min(len(units), calls // self.unit_cost, rows)
        chosen = random.Random(f"{self.random_seed}:{self.name}").sample(range(len(units)), count)
        return [units[i] for i in sorted(chosen)]

    async def prepare(self, units: Sequence[Any], allowances: list[Allowance]) -> None:
        """Work across a shard's units before they grow (TCIA's constraint pool). Default: none."""

    @abstractmethod
    async def grow(self, unit: Any, allowance: Allowance, emit: Emit) -> None:
        """Grow records from one unit within its allowance. Hand each batch on with `emit(kept,
        rejected)` as soon as it is final, in an order that does not depend on timing."""

    def written(self, result: Result, parse: Callable[[str], str] | None = None, **provenance: Any) -> Record:
        """A record of the instruction in `result`, with the call's model, tokens and finish reason."""
        return Record(
            instruction=(parse or parse_instruction)(result.text) if result.ok else "",
            strategy=self.name,
            model=self.llm.model,
            prompt_hash=self.prompts_hash,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            **provenance,
        )

    def request(self, prompt: Prompt, seed: int, schema=None, max_tokens: int | None = None, /, **values) -> Request:
        """`values` fill the template; positional-only above, so a template may have its own $seed."""
        generation = self.config.generation
        return Request(
            prompt.messages(**values),
            schema=schema,
            max_tokens=max_tokens or generation.max_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
            seed=seed,
        )


LABELS = {
    "new task", "task", "rewritten task", "improved task", "instruction", "new instruction", "question",
    "homework question", "rewritten prompt", "created prompt",
}


def parse_instruction(text: str) -> str:
    """A written task is plain text; drop the label or quotes a model may wrap it in."""
    text = text.strip().strip('"').strip()
    label, _, rest = text.partition(":")
    label = label.lower().strip("*# ")
    if (label in LABELS or re.fullmatch(r"task \d+", label)) and rest.strip():
        text = rest.strip().strip('"').strip()
    return text


def fault(record: Record, result: Result) -> tuple[str, str | None] | None:
    """Why a written instruction cannot be used (reason, detail): the call failed, the text was cut
    off, or nothing was left of it; None when it can."""
    if not result.ok:
        return "llm_error", result.error
    if result.finish_reason == "length":
        return "truncated_instruction", record.instruction
    if not record.instruction:
        return "empty_instruction", None
    return None


@cache
def strategies() -> dict[str, type[Strategy]]:
    """Every strategy, by name, in the order of their names: this package's modules and those that
    other installed packages name under the entry point group `germinate.strategies` (a module, or
    module:Class)."""
    return dict(sorted(discover_with_plugins(sys.modules[__name__], Strategy, ENTRY_POINTS, "strategy").items()))


@cache
def stages() -> dict[str, type[Stage]]:
    """The stages this package brings (respond), by name."""
    return discover(sys.modules[__name__], Stage)


def check_strategies(config: RunConfig) -> None:
    for name in config.strategies:
        strategies()[name](Context(config), 0).check()
