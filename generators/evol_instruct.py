"""Evol-Instruct (WizardLM, arXiv 2304.12244), a baseline: each seed is evolved step by step.

Every generation applies one evolution drawn at random: in depth (add constraints,
deepen, concretize, increase reasoning, complicate the input) or in breadth (a new,
rarer task of the same domain). The evolved task is answered at once, and the
elimination rules drop a failed evolution: no change from its parent, prompt-template
words copied into it, or an answer that is a short "sorry" or only stop words and
punctuation. A failed step leaves the next one to evolve its parent again.
"""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import Field

from germinate.budget import Allowance
from germinate.executor import Emit
from germinate.generators import STAGE, Strategy, fault
from germinate.generators.respond import answer_request, answered
from germinate.prompts import Prompt, combine_hashes
from germinate.records import Record, normalize, record_id, show
from germinate.settings import Section
from germinate.stage import Context

IN_DEPTH = Prompt(
    "I want you to act as a prompt rewriter. Rewrite the given prompt into a more complex version that is "
    "harder for AI assistants to handle, but still reasonable and answerable by humans. Keep any table, code "
    "or data of the given prompt. $method The rewritten prompt may add only 10 to 20 words. Do not use the "
    "words 'given prompt' or 'rewritten prompt' in it.\n\n#Given Prompt#:\n$task\n\n#Rewritten Prompt#:"
)
IN_BREADTH = Prompt(
    "I want you to act as a prompt creator. Draw inspiration from the given prompt to create a brand new "
    "prompt of the same domain but rarer. It should be of similar length and difficulty and answerable by "
    "humans. Do not use the words 'given prompt' or 'created prompt' in it.\n\n#Given Prompt#:\n$task\n\n"
    "#Created Prompt#:"
)
METHODS = {
    "add_constraints": "Add one more constraint or requirement to it.",
    "deepen": "If it asks about a specific issue, increase the depth and breadth of the inquiry.",
    "concretize": "Replace general concepts with more specific ones.",
    "increase_reasoning": "If it can be solved with a few simple steps of thinking, make it explicitly "
    "require multiple steps of reasoning.",
    "complicate_input": "Add a more complex input to it, such as a table, code, a formula or data, written "
    "out in the prompt.",
}
TEMPLATE_WORDS = ("given prompt", "rewritten prompt", "created prompt", "#given", "#rewritten", "#created")
STOP_WORDS = frozenset(
    "a an and are as at be but by for from has have he i in is it its of on or she that the their them they "
    "this to was we were what when which who will with you your".split()
)


def elimination(parent: Record, evolved: Record) -> tuple[str, str | None] | None:
    """WizardLM's rules on an evolved task before it is answered: (reason, detail), or None."""
    if normalize(evolved.instruction) in (normalize(show(parent)), normalize(parent.instruction)):
        return "no_change", None
    lowered = evolved.instruction.lower()
    copied = [word for word in TEMPLATE_WORDS if word in lowered]
    if copied:
        return "template_copy", copied[0]
    return None


def answer_elimination(output: str) -> tuple[str, str | None] | None:
    """WizardLM's rules on the answer: a short apology means the task was too hard; an answer of
    only stop words and punctuation is no answer."""
    words = re.findall(r"[a-z0-9']+", output.lower())
    if "sorry" in words and len(words) < 80:
        return "sorry_answer", output[:120]
    if all(word in STOP_WORDS for word in words):
        return "stop_words_answer", output[:120]
    return None


EvolOperation = Literal["add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input", "breadth"]


class EvolInstructConfig(Section):
    generations: int = Field(2, ge=1, le=10, description="evolutions applied one after another to each seed")
    operations: list[EvolOperation] = Field(
        default_factory=lambda: ["add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input",
                                 "breadth"],
        min_length=1,
        description="in-depth evolutions and the in-breadth one, drawn at random per step",
    )


class EvolInstruct(Strategy):
    name = "evol-instruct"
    section = "evol_instruct"
    Settings = EvolInstructConfig
    prompts_hash = combine_hashes(IN_DEPTH.hash, IN_BREADTH.hash)

    def __init__(self, context: Context, record_cost: int):
        super().__init__(context, record_cost)
        self.step_cost = self.unit_cost = 1 + record_cost  # evolve + answer (+ the judge's first look)

    async def grow(self, seed: Record, allowance: Allowance, emit: Emit) -> None:
        """A chain of evolutions from the seed; each step is handed on as soon as it is answered."""
        rng = random.Random(f"{self.random_seed}:{seed.id}")
        parent = seed
        for generation in range(1, self.settings.generations + 1):
            if allowance.records < 1 or allowance.calls < self.step_cost:
                break
            operation = rng.choice(self.settings.operations)
            if operation == "breadth":
                request = self.request(IN_BREADTH, self.random_seed + generation, task=show(parent))
            else:
                request = self.request(IN_DEPTH, self.random_seed + generation, task=show(parent),
                                       method=METHODS[operation])
            [result] = await self.llm.generate([request])
            child = self.written(
                result,
                id=record_id(parent.id, "evol", generation, operation),
                seed_id=seed.id,
                parent_id=parent.id,
                hop=parent.hop + 1,  # depth in the chain; a failed step leaves a gap in generations, not in hops
                operation=operation,
            )
            verdict = fault(child, result) or elimination(parent, child)
            if verdict is None:
                [answer] = await self.llm.generate([answer_request(child, self.config.generation, self.random_seed)])
                child = answered(child, answer, self.llm.model)
                if not answer.ok:
                    verdict = ("llm_error", answer.error)
                else:
                    verdict = answer_elimination(child.output or "")
            if verdict is not None:
                emit([], [child.dropped(STAGE, *verdict)])
                continue
            emit([child], [])
            parent = child
