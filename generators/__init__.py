"""Expansion strategies: one module each, behind one interface (`Strategy`).

A strategy's share of the budget is split over its units (seeds; GLAN: disciplines),
and each unit grows records within its own allowance. Every strategy writes the
same Record schema and fills the provenance fields that apply to it.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

from germinate.budget import Allowance
from germinate.config import RunConfig
from germinate.llm import LLM, Request, Result
from germinate.prompts import Prompt
from germinate.records import Record
from germinate.runs import EXPAND_STAGE

STAGE = EXPAND_STAGE


class Strategy(ABC):
    name: str
    prompts_hash: str  # of the templates its records went through: their provenance
    unit_cost: int  # the fewest LLM calls that grow one record from a unit (set by each strategy)

    def __init__(self, llm: LLM | None, config: RunConfig, record_cost: int):
        """`llm` may be None to plan units only; `record_cost`: LLM calls a kept record without an
        answer still needs after expansion (reserved when the record is made)."""
        self.llm = llm
        self.config = config
        self.record_cost = record_cost
        self.random_seed = config.random_seed

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

    @abstractmethod
    async def expand(self, units: Sequence[Any], allowances: list[Allowance]) -> tuple[list[Record], list[Record]]:
        """Grow records from each unit within its allowance. Returns (kept, rejected)."""

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


def strategies() -> dict[str, type[Strategy]]:
    # Imported here: each module imports this one for the base class.
    from generators import aide, evol_instruct, glan, self_instruct, tcia

    classes = (aide.AIDE, tcia.TCIA, glan.GLAN, self_instruct.SelfInstruct, evol_instruct.EvolInstruct)
    return {cls.name: cls for cls in classes}


def make_strategy(name: str, llm: LLM | None, config: RunConfig, record_cost: int) -> Strategy:
    return strategies()[name](llm, config, record_cost)


def check_strategies(config: RunConfig) -> None:
    for name in config.strategies:
        make_strategy(name, None, config, 0).check()
