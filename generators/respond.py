"""The respond stage: answer every instruction that has no output yet. Shared by all strategies."""

from __future__ import annotations

import dataclasses

from germinate.config import GenerationConfig
from germinate.llm import LLM, Request
from germinate.prompts import Prompt, combine_hashes
from germinate.records import Record, record_id, show

STAGE = "respond"

RESPOND = Prompt(
    "$task",
    system="You are a helpful assistant. Answer the user's task accurately, completely and concisely.",
)


async def respond(llm: LLM, records: list[Record], generation: GenerationConfig, random_seed: int = 0):
    """Returns (kept, rejected): answered records, and those whose request failed after its retries."""
    todo = [r for r in records if not r.output]
    results = await llm.generate(
        [
            Request(
                RESPOND.messages(task=show(r)),
                max_tokens=generation.response_max_tokens,
                temperature=generation.temperature,
                top_p=generation.top_p,
                seed=int(record_id(random_seed, r.id)[:8], 16),
            )
            for r in todo
        ]
    )
    answers = {r.id: result for r, result in zip(todo, results)}
    kept, rejected = [], []
    for record in records:
        result = answers.get(record.id)
        if result is None:  # came with an output (a seed with its answer)
            kept.append(record)
            continue
        answered = dataclasses.replace(
            record,
            output=(result.text or "").strip() if result.ok else None,
            model=llm.model,
            prompt_hash=combine_hashes(record.prompt_hash, RESPOND.hash),
            finish_reason=result.finish_reason,
            prompt_tokens=record.prompt_tokens + result.prompt_tokens,
            completion_tokens=record.completion_tokens + result.completion_tokens,
        )
        if not result.ok:
            rejected.append(answered.dropped(STAGE, "llm_error", result.error))
        elif not answered.output:
            rejected.append(answered.dropped(STAGE, "empty_response"))
        else:
            kept.append(answered)
    return kept, rejected
