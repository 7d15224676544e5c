"""Self-reflection: an LLM judge scores an item on a rubric; below the threshold the item
is rewritten with the critique and judged again, up to R tries.

Written once for any item: AIDE uses it on synthesized instructions, the quality
gate on (instruction, response) pairs. The caller says how an item is shown to
the judge and how a rewrite is asked for and applied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import takewhile
from statistics import mean
from typing import Callable, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, create_model

from germinate.config import GenerationConfig, ResponseReflectionConfig
from germinate.llm import LLM, Request, Result
from germinate.prompts import Prompt, combine_hashes
from germinate.records import Record, show

Item = TypeVar("Item")

# An enum rather than min/max bounds: every backend's grammar engine supports enums.
Score = Literal[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]

CRITIQUE_CHARS = 160

JUDGE = Prompt(
    "$context\n\n"
    "Assess it. First write a one-sentence critique that names its main weakness, then give "
    "each criterion a score from 1 (very poor) to 10 (excellent):\n$criteria"
)


class Rubric:
    """Named criteria; the judge's answer schema has a critique and one score per criterion."""

    def __init__(self, name: str, criteria: dict[str, str]):
        self.name = name
        self.criteria = criteria
        self.schema: type[BaseModel] = create_model(
            f"{name.title()}Judgement",
            critique=(str, Field(max_length=CRITIQUE_CHARS, description="one sentence")),
            **{key: (Score, ...) for key in criteria},
        )

    def request(self, context: str, seed: int) -> Request:
        criteria = "\n".join(f"- {key}: {text}" for key, text in self.criteria.items())
        return Request(
            JUDGE.messages(context=context, criteria=criteria),
            schema=self.schema,
            # The schema bounds the answer (a token is at least one character), so it always fits.
            max_tokens=CRITIQUE_CHARS + 24 * (len(self.criteria) + 1),
            temperature=0.0,  # a judge should not change its mind between reruns
            seed=seed,
        )


@dataclass
class Verdict:
    scores: dict[str, int]
    critique: str

    @property
    def score(self) -> float:
        return mean(self.scores.values())

    @classmethod
    def of(cls, result: Result) -> Verdict:
        parsed = result.parsed.model_dump()
        critique = parsed.pop("critique").strip()
        return cls(scores=parsed, critique=critique)


@dataclass
class Reflection(Generic[Item]):
    item: Item
    verdict: Verdict | None = None
    tries: int = 0  # rewrites made
    passed: bool = False
    # A judgement or a rewrite that failed after its retries: the item stays as it was last judged
    # (unjudged when the first judgement failed). The judge's failure is not the item's.
    error: str | None = None


async def reflect(
    llm: LLM,
    items: list[Item],
    *,
    rubric: Rubric,
    show: Callable[[Item], str],
    rewrite: Callable[[Item, Verdict], Request],
    apply: Callable[[Item, Result], Item],
    threshold: float,
    tries: int,
    take: Callable[[int], bool],
) -> list[Reflection[Item]]:
    """Judge all items; rewrite the failing ones with their critique and judge again.

    The caller has paid for the first judgement of each item. A rewrite round
    costs two calls per item (rewrite + judge), paid with `take(2)`, which says
    whether the budget allows them. Items the budget cannot cover keep their
    last verdict; a rewrite that scores no better than what it replaced, or whose
    judgement failed, is undone. An item passes when its mean score reaches the threshold.
    """
    states = [Reflection(item) for item in items]
    pending = states
    for round_ in range(tries + 1):
        before = {id(s): s.item for s in pending}
        if round_:
            pending = list(takewhile(lambda _: take(2), pending))
            rewrites = await llm.generate([rewrite(s.item, s.verdict) for s in pending])
            for state, result in zip(pending, rewrites):
                state.tries += 1
                if result.ok:
                    state.item = apply(state.item, result)
                else:
                    state.error = result.error
            pending = [s for s in pending if s.error is None]
        judged = await llm.generate(
            [rubric.request(show(s.item), seed=round_) for s in pending]
        )
        unimproved = set()
        for state, result in zip(pending, judged):
            if not result.ok:
                state.error = result.error
                state.item = before[id(state)]
                continue
            verdict = Verdict.of(result)
            if round_ and verdict.score <= state.verdict.score:
                # A rewrite the judge does not like better is undone, and the item is not tried again.
                state.item = before[id(state)]
                unimproved.add(id(state))
                continue
            state.verdict = verdict
            state.passed = verdict.score >= threshold
        pending = [s for s in pending if s.error is None and not s.passed and id(s) not in unimproved]
        if not pending:
            break
    return states


# The quality gate: each (instruction, response) pair judged, failing responses revised.
STAGE = "reflect"
RESPONSE = Rubric(
    "response",
    {
        "correctness": "the answer is factually and logically correct",
        "helpfulness": "the answer fully solves the task and is clear",
        "instruction_following": "the answer does what the task asks, in the form it asks for",
    },
)
REVISE = Prompt(
    "Task:\n$task\n\nDraft answer:\n$answer\n\nCritique of the draft: $critique\n\n"
    "Write an improved answer to the task that fixes what the critique names. Write only the answer."
)


async def judge_responses(
    llm: LLM,
    records: list[Record],
    config: ResponseReflectionConfig,
    generation: GenerationConfig,
    take: Callable[[int], bool],
    acceptable: Callable[[Record], bool],
) -> tuple[list[Record], list[Record]]:
    """Score every answer; revise the failing ones with the critique, up to `config.tries` times.
    The score is stored on the record (`quality_score`): it is what selection weighs. A revision
    comes after the heuristic filters, so it must pass them (`acceptable`) to replace its draft:
    a small model's revision often talks about "the critique" instead of answering.
    Only a low score drops a record: a failed judgement keeps it (noted in `quality_critique`),
    and a seed, the user's own data, is never dropped."""

    def context(record: Record) -> str:
        return f"Task:\n{show(record)}\n\nAnswer:\n{record.output}"

    def revise(record: Record, verdict: Verdict) -> Request:
        return Request(
            REVISE.messages(task=show(record), answer=record.output, critique=verdict.critique),
            max_tokens=generation.response_max_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
        )

    def apply(record: Record, result: Result) -> Record:
        if result.finish_reason == "length" or not (result.text or "").strip():
            return record  # a cut-off or empty revision is no answer
        revised = dataclasses.replace(
            record,
            output=result.text.strip(),
            finish_reason=result.finish_reason,
            prompt_tokens=record.prompt_tokens + result.prompt_tokens,
            completion_tokens=record.completion_tokens + result.completion_tokens,
        )
        return revised if acceptable(revised) else record

    def judged(items: list[Record], tries: int):
        return reflect(
            llm, items, rubric=RESPONSE, show=context, rewrite=revise, apply=apply,
            threshold=config.threshold, tries=tries, take=take,
        )

    # An answer that came with the seed (no model wrote it) is judged but never rewritten.
    states = await judged([r for r in records if r.model is not None], config.tries)
    states += await judged([r for r in records if r.model is None], 0)
    position = {r.id: i for i, r in enumerate(records)}
    kept, rejected = [], []
    for state in sorted(states, key=lambda s: position[s.item.id]):
        record, verdict = state.item, state.verdict
        if verdict is None:
            kept.append(dataclasses.replace(record, quality_critique=f"not judged: {state.error}"))
            continue
        record = dataclasses.replace(
            record,
            quality_score=verdict.score,
            quality_critique=verdict.critique,
            quality_revisions=state.tries,
            prompt_hash=combine_hashes(record.prompt_hash, JUDGE.hash, REVISE.hash),
        )
        if not state.passed and config.on_fail == "drop" and record.strategy != "seed":
            detail = f"score {verdict.score:.1f} < {config.threshold:g}: {verdict.critique}"
            rejected.append(record.dropped(STAGE, "low_quality_score", detail))
        else:
            kept.append(record)
    return kept, rejected
