"""The respond stage: answer every instruction that has no output yet. Shared by all strategies."""

from __future__ import annotations

import dataclasses

from germinate.llm import Request, Result
from germinate.prompts import Prompt, combine_hashes
from germinate.records import Record, record_id, show
from germinate.settings import GenerationConfig
from germinate.stage import Outcome, Stage

RESPOND = Prompt(
    "$task",
    system="You are a helpful assistant. Answer the user's task accurately, completely and concisely.",
)


def answer_request(record: Record, generation: GenerationConfig, random_seed: int) -> Request:
    return Request(
        RESPOND.messages(task=show(record)),
        max_tokens=generation.response_max_tokens,
        temperature=generation.temperature,
        top_p=generation.top_p,
        seed=int(record_id(random_seed, record.id)[:8], 16),
    )


def answered(record: Record, result: Result, model: str) -> Record:
    """The record with its answer (None when the request failed) and the answer's provenance."""
    return dataclasses.replace(
        record,
        output=(result.text or "").strip() if result.ok else None,
        model=model,
        prompt_hash=combine_hashes(record.prompt_hash, RESPOND.hash),
        finish_reason=result.finish_reason,
        prompt_tokens=record.prompt_tokens + result.prompt_tokens,
        completion_tokens=record.completion_tokens + result.completion_tokens,
    )


class Respond(Stage):
    """Answers every instruction that has none yet, as soon as it is made. A request that failed
    after its retries drops its record (`llm_error`, with the error)."""

    name = "respond"
    default_place = 10
    section = "generation"
    calls_llm = True

    @classmethod
    def calls_for(cls, answered: bool) -> int:
        return 0 if answered else 1

    async def run(self, records: list[Record]) -> Outcome:
        llm = self.context.llm
        todo = [r for r in records if not r.output]
        results = await llm.generate([answer_request(r, self.settings, self.config.random_seed) for r in todo])
        answers = {r.id: result for r, result in zip(todo, results)}
        kept, rejected = [], []
        for record in records:
            result = answers.get(record.id)
            if result is None:  # came with an output (a seed with its answer, or answered while expanding)
                kept.append(record)
                continue
            record = answered(record, result, llm.model)
            if not result.ok:
                rejected.append(record.dropped(self.name, "llm_error", result.error))
            elif not record.output:
                rejected.append(record.dropped(self.name, "empty_response"))
            else:
                kept.append(record)
        return kept, rejected
