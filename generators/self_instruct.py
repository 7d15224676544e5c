"""Self-Instruct (arXiv 2212.10560), a baseline: few-shot prompting from a growing task pool.

Each prompt shows tasks sampled from the pool (mostly seeds, a few generated ones) and
asks for a new one; a new task joins the pool only if its ROUGE-L to every task already
there stays below 0.7. Rounds repeat until the budget is spent.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Sequence

from pydantic import Field

from germinate.budget import Allowance
from germinate.executor import Emit
from germinate.generators import STAGE, Strategy, fault, parse_instruction
from germinate.prompts import Prompt, combine_hashes
from germinate.records import Record, record_id, show
from germinate.settings import Section
from germinate.stage import Context

GENERATE = Prompt(
    "Come up with a new task for an AI assistant. Here are some examples:\n\n$examples\n\n"
    "Write task $number: a new task, different from all of the above, in one to three sentences. "
    "Include any data it needs. Write only the task."
)


def first_task(text: str) -> str:
    """The model may go on listing tasks ("Task 10: ..."): keep the first."""
    pieces = [p for p in re.split(r"\s*\bTask \d+\s*:", text) if p.strip()]
    return parse_instruction(pieces[0]) if pieces else ""


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_l(candidate: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 of two token lists: their longest common subsequence against both lengths."""
    if not candidate or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for a in candidate:
        current = [0]
        for j, b in enumerate(reference):
            current.append(previous[j] + 1 if a == b else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


class SelfInstructConfig(Section):
    demonstrations: int = Field(8, ge=1, le=20, description="tasks shown in each prompt")
    machine_demonstrations: int = Field(2, ge=0, le=20, description="of which generated ones, once there are some")
    rouge_threshold: float = Field(0.7, gt=0, le=1, description="drop a task whose ROUGE-L to a pool task reaches it")
    batch: int = Field(8, ge=1, description="prompts per round; the pool grows between rounds")


class SelfInstruct(Strategy):
    name = "self-instruct"
    section = "self_instruct"
    Settings = SelfInstructConfig
    prompts_hash = combine_hashes(GENERATE.hash)

    def __init__(self, context: Context, record_cost: int):
        super().__init__(context, record_cost)
        self.task_cost = self.unit_cost = 1 + record_cost  # write + downstream

    def units(self, seeds: list[Record], calls: int, rows: int) -> Sequence[tuple[Record, ...]]:
        """One unit: the whole seed pool (the pool grows as one, so it is not split)."""
        return self.affordable([tuple(seeds)] if seeds else [], calls, rows)

    async def grow(self, unit: tuple[Record, ...], allowance: Allowance, emit: Emit) -> None:
        """Rounds of `batch` prompts; each round's tasks are handed on when the pool has taken them."""
        seeds = list(unit)
        rng = random.Random(self.random_seed)
        pool = [(seed, tokens(show(seed))) for seed in seeds]
        kept: list[Record] = []
        round_ = 0
        while allowance.records >= 1 and allowance.calls >= self.task_cost:
            round_ += 1
            batch = min(self.settings.batch, allowance.calls // self.task_cost, allowance.records)
            prompts = [self._prompt(seeds, kept, rng) for _ in range(batch)]
            written = await self.llm.generate(
                [self.request(GENERATE, self.random_seed + round_, examples=examples, number=number)
                 for examples, number in prompts]
            )
            grown, rejected = [], []
            for i, result in enumerate(written):
                record = self.written(
                    result, first_task, id=record_id("self-instruct", self.random_seed, round_, i), hop=round_
                )
                reason, detail, duplicate = self._novelty(record, result, pool)
                if reason is None:
                    grown.append(record)
                    pool.append((record, tokens(record.instruction)))
                    continue
                rejected.append(dataclasses.replace(record.dropped(STAGE, reason, detail), duplicate_of=duplicate))
            kept += grown
            emit(grown, rejected)

    def _prompt(self, seeds: list[Record], generated: list[Record], rng: random.Random) -> tuple[str, int]:
        shown = min(self.settings.machine_demonstrations, self.settings.demonstrations, len(generated))
        machine = rng.sample(generated, shown)
        human = rng.sample(seeds, min(self.settings.demonstrations - len(machine), len(seeds)))
        examples = human + machine
        rng.shuffle(examples)
        listed = "\n".join(f"Task {i + 1}: {' '.join(show(r).split())}" for i, r in enumerate(examples))
        return listed, len(examples) + 1

    def _novelty(self, record: Record, result, pool: list[tuple[Record, list[str]]]):
        """(reason, detail, duplicate id) for a task that may not join the pool; (None, None, None) if it may."""
        problem = fault(record, result)
        if problem is not None:
            return *problem, None
        words = tokens(record.instruction)
        score, closest = max(((rouge_l(words, other), r) for r, other in pool), key=lambda x: x[0])
        if score >= self.settings.rouge_threshold:
            return "similar_to_pool", f"ROUGE-L {score:.2f} >= {self.settings.rouge_threshold:g}", closest.id
        return None, None, None
