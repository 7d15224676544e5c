"""Self-reflection: an LLM judge scores an item on a rubric; below the threshold the item
is rewritten with the critique and judged again, up to R tries.

Written once for any item, below both of its users: AIDE uses it on synthesized
instructions, the quality gate (filters/judge.py) on (instruction, response) pairs.
The caller says how an item is shown to the judge and how a rewrite is asked for and applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import takewhile
from statistics import mean
from typing import Callable, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, create_model

from germinate.llm import LLM, Request, Result
from germinate.prompts import Prompt

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
    verdicts: list[Verdict | None] | None = None,
) -> list[Reflection[Item]]:
    """Judge all items; rewrite the failing ones with their critique and judge again.

    The caller has paid for the first judgement of each item; an item that comes with its
    verdict (`verdicts`) is not judged again before its rewrite. A rewrite round costs two
    calls per item (rewrite + judge), paid with `take(2)`, which says whether the budget
    allows them. Items the budget cannot cover keep their last verdict; a rewrite that
    scores no better than what it replaced, or whose judgement failed, is undone. An item
    passes when its mean score reaches the threshold.
    """
    states = [Reflection(item) for item in items]
    for state, verdict in zip(states, verdicts or []):
        state.verdict, state.passed = verdict, verdict is not None and verdict.score >= threshold
    pending = [s for s in states if s.verdict is None]
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
        if not round_:  # those that came judged join their first rewrite, in the items' order
            pending = states
        pending = [s for s in pending if s.error is None and not s.passed and id(s) not in unimproved]
        if not pending:
            break
    return states
