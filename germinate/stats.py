"""Per-stage statistics: every stage reports the same numbers, merged into one run summary."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable


def error_kind(error: str) -> str:
    """What failed, without the detail: "http_500", "timeout", "invalid_json"..."""
    return error.split(":", 1)[0]


@dataclass
class Usage:
    """LLM requests of one stage shard. `on_call` lets a progress display follow along."""

    calls: int = 0  # requests asked for, whether answered from cache or not
    cached: int = 0
    failed: int = 0  # still failing after the last retry
    unanswered: int = 0  # of which the server never answered: a rerun asks again
    errors: Counter = field(default_factory=Counter)  # error kind -> failed requests
    prompt_tokens: int = 0
    completion_tokens: int = 0
    on_call: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def add(
        self, *, cached: bool, error: str | None, unanswered: bool, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.calls += 1
        self.cached += cached
        if error is not None:
            self.failed += 1
            self.unanswered += unanswered
            self.errors[error_kind(error)] += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if self.on_call:
            self.on_call()


@dataclass
class StageStats:
    stage: str
    records_in: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    llm_calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    unanswered_calls: int = 0
    errors: Counter = field(default_factory=Counter)  # error kind -> failed requests
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    resumed: bool = False  # every shard was finished by an earlier invocation
    unsealed: int = 0  # shards left open for a rerun: a request went unanswered, or their input was open

    def add_usage(self, usage: Usage) -> None:
        self.llm_calls += usage.calls
        self.cached_calls += usage.cached
        self.failed_calls += usage.failed
        self.unanswered_calls += usage.unanswered
        self.errors += usage.errors
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens

    def __add__(self, other: StageStats) -> StageStats:
        merged = StageStats(self.stage, resumed=self.resumed and other.resumed)
        for f in dataclasses.fields(self):
            if f.name not in ("stage", "resumed"):
                setattr(merged, f.name, getattr(self, f.name) + getattr(other, f.name))
        return merged
