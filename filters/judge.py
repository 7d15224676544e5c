"""The quality gate's judge: each (instruction, response) pair scored on correctness, helpfulness
and instruction following as soon as it is answered; at the end of its shard, the answers below
the threshold are revised with the critique, with the calls the shard has left."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from germinate.filters.heuristics import Heuristics
from germinate.judge import JUDGE, Reflection, Rubric, Verdict, reflect
from germinate.llm import Request, Result
from germinate.prompts import Prompt, combine_hashes
from germinate.records import Record, show
from germinate.settings import StageSettings
from germinate.stage import Context, Outcome, Stage

if TYPE_CHECKING:
    from germinate.config import RunConfig

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
NOT_JUDGED = "not judged: "


class JudgeConfig(StageSettings):
    threshold: float = Field(5.0, ge=1, le=10, description="judge score (1-10) to pass")
    tries: int = Field(1, ge=0, le=5, description="R: revisions of a failing response")
    # keep by default: the embedded 135M model cannot judge (it scored every answer 1, good or
    # bad), and a hard cut would empty a laptop run. Its score still weighs in selection.
    on_fail: Literal["drop", "keep"] = Field(
        "keep", description="what happens to an answer still below the threshold: drop it (trust the judge) or keep it"
    )
    margin: float = Field(
        1.0, ge=0, le=9, description="with generation.samples above 1: how much lower than the best the judge must "
        "score the worst answer of an instruction for the two to make a preference pair",
    )


class Judge(Stage):
    """The score is stored on the record (`quality_score`): it is what selection weighs. Only a low
    score drops a record (under `on_fail: drop`): a failed judgement keeps it, noted in
    `quality_critique`, and a seed, the user's own data, is never dropped. An answer that came
    with its seed is judged but never rewritten."""

    name = "judge"
    default_place = 50
    section = "quality.judge"
    Settings = JudgeConfig
    calls_llm = True

    def __init__(self, context: Context):
        super().__init__(context)
        self.llm = context.llm
        self.generation = context.config.generation
        # A revision comes after the heuristic filters, so it must pass them to replace its draft:
        # a small model's revision often talks about "the critique" instead of answering.
        self.heuristics = Heuristics(context) if Heuristics.enabled(context.config) else None

    @classmethod
    def calls_for(cls, config: RunConfig, answered: bool) -> int:
        return 1 if answered else config.generation.samples  # the first look at each answer

    async def run(self, records: list[Record]) -> Outcome:
        """The first look, as answers arrive (paid for when each record was made), at every answer
        sampled for an instruction: the best is its answer."""
        answers = [dataclasses.replace(record, output=output, other_outputs=None)
                   for record in records for output in [record.output, *(record.other_outputs or [])]]
        states = iter(await self._reflect(answers, tries=0, calls=0))
        return [self._chosen(record, [next(states) for _ in range(1 + len(record.other_outputs or []))])
                for record in records], []

    def _chosen(self, record: Record, states: list[Reflection[Record]]) -> Record:
        """The answer the judge scores best among those sampled (the first on a tie, and the first
        alone when none was judged), with the worst as its pair when it scores `margin` lower. A
        sampled answer must pass the heuristic filters to replace the first, which did."""
        judged = [s for s in states if s.verdict is not None]
        eligible = [s for s in judged if s is states[0] or self.heuristics is None or self.heuristics.check(s.item) is None]
        if not eligible:
            return self._scored(states[0])
        best = max(eligible, key=lambda s: s.verdict.score)
        worst = min(judged, key=lambda s: s.verdict.score)
        chosen, gap = self._scored(best), best.verdict.score - worst.verdict.score
        return self._with_draft(chosen, self._scored(worst)) if gap > 0 and gap >= self.settings.margin else chosen

    async def finish(self, records: list[Record], calls: int) -> Outcome:
        """What the shard has left (`calls`) pays for revisions, two calls each (revise, judge again),
        in the shard's order; then what still fails goes, under `on_fail: drop`."""
        revisable = [r for r in records if r.model is not None and r.quality_score is not None]
        verdicts = [Verdict({"score": r.quality_score}, r.quality_critique or "") for r in revisable]
        states = await self._reflect(revisable, self.settings.tries, calls, verdicts)
        revised = {state.item.id: self._with_draft(self._scored(state, first=False), draft)
                   for state, draft in zip(states, revisable)}
        kept, rejected = [], []
        for record in records:
            record = revised.get(record.id, record)
            score = record.quality_score
            if score is not None and score < self.settings.threshold and self.settings.on_fail == "drop" \
                    and record.strategy != "seed":
                detail = f"score {score:.1f} < {self.settings.threshold:g}: {record.quality_critique}"
                rejected.append(record.dropped(self.name, "low_quality_score", detail))
            else:
                kept.append(record)
        return kept, rejected

    @staticmethod
    def _with_draft(record: Record, draft: Record) -> Record:
        """A revision the judge scored higher keeps the answer it replaced: a preference pair (unless
        the record has one already, with the worst answer sampled, which scored lower still)."""
        if record.output == draft.output or record.draft_output is not None:
            return record
        return dataclasses.replace(record, draft_output=draft.output, draft_score=draft.quality_score,
                                   draft_critique=draft.quality_critique)

    def _scored(self, state: Reflection[Record], first: bool = True) -> Record:
        record, verdict = state.item, state.verdict
        if verdict is None:
            return dataclasses.replace(record, quality_critique=f"{NOT_JUDGED}{state.error}")
        return dataclasses.replace(
            record,
            quality_score=verdict.score,
            quality_critique=verdict.critique,
            quality_revisions=record.quality_revisions + state.tries,
            prompt_hash=combine_hashes(record.prompt_hash, JUDGE.hash, REVISE.hash) if first else record.prompt_hash,
        )

    async def _reflect(
        self, records: list[Record], tries: int, calls: int, verdicts: list[Verdict] | None = None
    ) -> list[Reflection[Record]]:
        """The records judged (unless `verdicts` has their first judgements) and revised while they
        fall short, `tries` times at most, each revision paid from `calls` (two: revise, judge again)."""
        left = calls

        def take(needed: int) -> bool:
            nonlocal left
            if needed > left:
                return False
            left -= needed
            return True

        def context(record: Record) -> str:
            return f"Task:\n{show(record)}\n\nAnswer:\n{record.output}"

        def revise(record: Record, verdict: Verdict) -> Request:
            return Request(
                REVISE.messages(task=show(record), answer=record.output, critique=verdict.critique),
                max_tokens=self.generation.response_max_tokens,
                temperature=self.generation.temperature,
                top_p=self.generation.top_p,
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
            return revised if self.heuristics is None or self.heuristics.check(revised) is None else record

        return await reflect(
            self.llm, records, rubric=RESPONSE, show=context, rewrite=revise, apply=apply,
            threshold=self.settings.threshold, tries=tries, take=take, verdicts=verdicts,
        )
