"""Hard caps on what a run spends in tokens and dollars (budget.max_tokens, budget.max_cost).

Each shard gets its part of the run's caps, as it gets its part of the LLM calls, and keeps it where
its requests are sent (a thread of the driver, a Ray worker): the run's spend is the sum of its
shards', so no shard passing its part means the run never passes the cap. A try of a request goes
out only if its worst case (a token for each byte of its prompt, as no tokenizer's token is shorter,
a few for the chat template, and its max_tokens) fits beside what was spent and what is in flight;
its answer then counts as the server reports it, valid or not. Answers from the run's cache count
too: the run paid them once. A request that does not fit is not sent: it fails as `over_budget`,
unanswered, so the same command with a larger cap goes on from there."""

from __future__ import annotations

from dataclasses import dataclass

from germinate.llm.base import Completion, Request, Result
from germinate.settings import BudgetConfig

OVER_BUDGET = "over_budget"
TOKENS_PER_MESSAGE = 8  # a chat template's own tokens around each message


@dataclass
class TokenCap:
    budget: BudgetConfig
    part: float  # of the run's caps: the shard's part of its LLM calls
    prompt_tokens: int = 0  # spent (counted as reported, answers from the cache included: the run paid them once)
    completion_tokens: int = 0
    held_prompt: int = 0  # what the requests in flight may still spend
    held_completion: int = 0

    @staticmethod
    def worst(request: Request) -> tuple[int, int]:
        return sum(len(m["content"].encode()) + TOKENS_PER_MESSAGE for m in request.messages), request.max_tokens

    def passed(self, prompt: int, completion: int) -> str | None:
        """The setting that `prompt` and `completion` tokens in all would pass, or None."""
        budget = self.budget
        if budget.max_tokens is not None and prompt + completion > budget.max_tokens * self.part:
            return "budget.max_tokens"
        if budget.max_cost is not None and budget.cost(prompt, completion) > budget.max_cost * self.part:
            return "budget.max_cost"
        return None

    def hold(self, request: Request) -> str | None:
        """Hold the request's worst case, or say which cap it would pass (and hold nothing)."""
        prompt, completion = self.worst(request)
        passed = self.passed(self.prompt_tokens + self.held_prompt + prompt,
                             self.completion_tokens + self.held_completion + completion)
        if passed is None:
            self.held_prompt += prompt
            self.held_completion += completion
        return passed

    def settle(self, request: Request, completion: Completion | None) -> None:
        """A held try is over: what it held is released, what its answer (if any) spent is counted."""
        prompt, most = self.worst(request)
        self.held_prompt -= prompt
        self.held_completion -= most
        if completion is not None:
            self.count(completion.prompt_tokens, completion.completion_tokens)

    def count(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    @staticmethod
    def refusal(request: Request, cap: str, billed: Completion) -> Result:
        return Result(request, error=f"{OVER_BUDGET}: sending it would pass {cap}", unanswered=True,
                      prompt_tokens=billed.prompt_tokens, completion_tokens=billed.completion_tokens)
