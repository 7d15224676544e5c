"""The respond stage: answer every instruction that has no output yet. Shared by all strategies."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

from germinate.llm import Request, Result
from germinate.prompts import Prompt, combine_hashes
from germinate.records import Record, record_id, show
from germinate.settings import GenerationConfig
from germinate.stage import Outcome, Stage

if TYPE_CHECKING:
    from germinate.config import RunConfig

RESPOND = Prompt(
    "$task",
    system="You are a helpful assistant. Answer the user's task accurately, completely and concisely.",
)


def answer_request(record: Record, generation: GenerationConfig, random_seed: int, sample: int = 0) -> Request:
    """The request for an answer; each sample of an instruction has a seed of its own (the first one's
    is the seed a single answer has)."""
    return Request(
        RESPOND.messages(task=show(record)),
        max_tokens=generation.response_max_tokens,
        temperature=generation.temperature,
        top_p=generation.top_p,
        seed=int(record_id(random_seed, record.id, *([sample] if sample else []))[:8], 16),
    )


def answered(record: Record, result: Result, model: str, others: Sequence[Result] = ()) -> Record:
    """The record with its answer (None when the request failed), the other answers sampled that came
    whole (`others`: one cut off at max_tokens is no candidate), and the answers' provenance."""
    texts = [(r.text or "").strip() for r in others if r.ok and r.finish_reason != "length"]
    return dataclasses.replace(
        record,
        output=(result.text or "").strip() if result.ok else None,
        other_outputs=[text for text in texts if text] or None,
        model=model,
        prompt_hash=combine_hashes(record.prompt_hash, RESPOND.hash),
        finish_reason=result.finish_reason,
        prompt_tokens=record.prompt_tokens + sum(r.prompt_tokens for r in [result, *others]),
        completion_tokens=record.completion_tokens + sum(r.completion_tokens for r in [result, *others]),
    )


class Respond(Stage):
    """Answers every instruction that has none yet, as soon as it is made. A request that failed
    after its retries drops its record (`llm_error`, with the error)."""

    name = "respond"
    default_place = 10
    section = "generation"
    calls_llm = True

    @classmethod
    def calls_for(cls, config: RunConfig, answered: bool) -> int:
        return 0 if answered else config.generation.samples

    async def run(self, records: list[Record]) -> Outcome:
        llm, samples = self.context.llm, self.settings.samples
        todo = [r for r in records if not r.output]
        results = await llm.generate([answer_request(r, self.settings, self.config.random_seed, sample)
                                      for r in todo for sample in range(samples)])
        answers = {r.id: results[i * samples:(i + 1) * samples] for i, r in enumerate(todo)}
        kept, rejected = [], []
        for record in records:
            if record.id not in answers:  # came with an output (a seed with its answer, or answered while expanding)
                kept.append(record)
                continue
            # The first answer that came is the record's; a failed sample costs only itself.
            came = [r for r in answers[record.id] if r.ok and (r.text or "").strip()] or answers[record.id]
            result = came[0]
            record = answered(record, result, llm.model, came[1:])
            if not result.ok:
                rejected.append(record.dropped(self.name, "llm_error", result.error))
            elif not record.output:
                rejected.append(record.dropped(self.name, "empty_response"))
            else:
                kept.append(record)
        return kept, rejected
