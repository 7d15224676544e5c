"""The one LLM interface: `await llm.generate(requests) -> results`.

Backends only turn a request into a completion. Everything else lives here, once:
bounded concurrency, retries with backoff and jitter, waiting out an outage,
JSON-schema validation, the response cache and token accounting. A request that
still fails after the last retry comes back as a Result with an error; `generate`
raises only when the run cannot go on (the server refuses every request, or did
not answer for llm.outage_timeout_s).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import json
import random
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Coroutine, Iterator, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from germinate.errors import UserError
from germinate.llm.cache import ResponseCache, cache_key
from germinate.llm.errors import PermanentError, TransientError
from germinate.llm.outage import Outage
from germinate.stats import Usage

if TYPE_CHECKING:
    from germinate.llm.cap import TokenCap

T = TypeVar("T")

# The Usage of the stage whose coroutine is running: its requests count there.
_usage: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("germinate_usage", default=None)


@contextlib.contextmanager
def _bound(variable: contextvars.ContextVar, value: Any) -> Iterator[None]:
    """`variable` is `value` inside, and in the tasks started inside."""
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def counted(usage: Usage | None) -> contextlib.AbstractContextManager[None]:
    """Requests made inside (and in tasks started inside) count into `usage`."""
    return _bound(_usage, usage)


# What pays for the requests made inside: each asks it first, and it refuses one past its budget.
_payer: contextvars.ContextVar[Payer | None] = contextvars.ContextVar("germinate_payer", default=None)


class Payer(Protocol):
    def pay(self, calls: int) -> None:
        """Spend `calls`, or raise."""


def paid_by(payer: Payer | None) -> contextlib.AbstractContextManager[None]:
    """Requests made inside (and in tasks started inside) are paid by `payer` (None: by nothing)."""
    return _bound(_payer, payer)


def pay(calls: int) -> None:
    """`calls` paid by what pays for the requests made here, if anything does."""
    payer = _payer.get()
    if payer is not None:
        payer.pay(calls)


# The tokens and dollars the requests made inside may spend (germinate/llm/cap.py).
_cap: contextvars.ContextVar[TokenCap | None] = contextvars.ContextVar("germinate_cap", default=None)


@dataclass(frozen=True)
class Request:
    messages: list[dict[str, str]]
    schema: type[BaseModel] | None = None
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Result:
    request: Request
    text: str | None = None
    parsed: Any = None  # an instance of request.schema
    error: str | None = None  # "kind: detail" after the last retry
    unanswered: bool = False  # the error is the server's silence, not its answer: a rerun asks again
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


# The smallest request a chat server answers: asks whether it is there at all (germinate.llm.outage).
PING = Request([{"role": "user", "content": "Say OK."}], max_tokens=1, temperature=0.0)


class Backend(ABC):
    model: str  # the name that goes into cache keys and provenance
    location: str  # where requests go, for the user: a server's URL, a model file

    @abstractmethod
    async def complete(self, request: Request, schema: dict[str, Any] | None) -> Completion: ...

    async def ping(self) -> None:
        await self.complete(PING, None)

    def describe(self) -> str:
        """Where its requests are now, for a run that waits too long."""
        return self.location

    async def close(self) -> None:
        return None


@functools.cache
def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def parse_json(schema: type[BaseModel], text: str) -> BaseModel:
    """Validate against the schema; tolerate a code fence or chatter around the object, and a raw
    newline inside a string (llama.cpp's JSON grammar lets one through)."""
    start, end = text.find("{"), text.rfind("}")
    body = text[start : end + 1] if 0 <= start < end else text
    try:
        return schema.model_validate(json.loads(body, strict=False))
    except json.JSONDecodeError:
        return schema.model_validate_json(body)  # raises the ValidationError that names the fault


class LLM:
    """Owns one event loop thread, so sync callers in several threads share one client and one limit."""

    def __init__(
        self,
        backend: Backend,
        cache: ResponseCache | None = None,
        *,
        concurrency: int = 16,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        outage_timeout_s: float = 300.0,
    ):
        self.backend = backend
        self.cache = cache
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._outage = Outage(backend.ping, backend.location, outage_timeout_s, on_pause=self._flush_cache)
        # Binds to the loop on first use (Python >= 3.10), which is the LLM's own loop.
        self._slots = asyncio.Semaphore(concurrency)
        self.in_flight = 0  # requests sent and not yet answered, for a stalled run's report
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="germinate-llm", daemon=True)
        self._thread.start()

    @property
    def model(self) -> str:
        return self.backend.model

    def describe(self) -> str:
        return f"{self.in_flight} requests sent to {self.backend.describe()}"

    def run(self, coro: Coroutine[Any, Any, T], usage: Usage | None = None, cap: TokenCap | None = None) -> T:
        """Run a coroutine on the LLM's loop from any thread; its requests count into `usage` and
        spend within `cap`."""

        async def with_usage() -> T:
            with counted(usage), _bound(_cap, cap):
                return await coro

        return asyncio.run_coroutine_threadsafe(with_usage(), self._loop).result()

    async def generate(self, requests: list[Request]) -> list[Result]:
        try:
            return list(await asyncio.gather(*(self._generate_one(r) for r in requests)))
        finally:
            self._flush_cache()

    def _flush_cache(self) -> None:
        if self.cache:
            self.cache.flush()

    async def _generate_one(self, request: Request) -> Result:
        pay(1)
        schema = json_schema(request.schema) if request.schema else None
        params = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        key = cache_key(self.model, request.messages, params, schema)
        hit = self.cache.get(key) if self.cache else None
        cap = _cap.get()
        if hit is not None:
            result = self._result(request, Completion(**hit), cached=True)
            if cap:
                cap.count(result.prompt_tokens, result.completion_tokens)
        else:
            result = await self._call_with_retries(request, schema, cap)
            if result.ok and self.cache:
                self.cache.put(key, self._completion_fields(result))
        usage = _usage.get()
        if usage is not None:
            # An answer from the run's cache counts its tokens too: the run paid them once, in this
            # invocation or an earlier one, and a resumed run reports what an uninterrupted one does.
            usage.add(cached=result.cached, error=result.error, unanswered=result.unanswered,
                      prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
        return result

    async def _call_with_retries(self, request: Request, schema: dict[str, Any] | None, cap: TokenCap | None) -> Result:
        """The request's answer after up to max_retries more tries, with the tokens of every try the
        server answered (an invalid answer is billed too). Each try is sent only within `cap`."""
        error, tries, redraws, unanswered = "unknown", 0, 0, False
        billed = Completion("")  # the tokens of answers that came back and were not kept
        while True:
            # Only an answer that came back invalid draws a new seed (a deterministic sampler would repeat it);
            # a try the server never answered keeps it, so faults on the way do not change the data.
            sent = dataclasses.replace(request, seed=request.seed + redraws) if redraws else request
            try:
                async with self._slots:
                    await self._outage.ready()  # waits out an outage; raises ServerLost past the patience
                    if cap and (passed := cap.hold(sent)):  # held once in flight: a queued request holds nothing
                        return cap.refusal(request, passed, billed)
                    self.in_flight += 1
                    completion = None
                    try:
                        completion = await self.backend.complete(sent, schema)
                    finally:
                        self.in_flight -= 1
                        if cap:
                            cap.settle(sent, completion)
            except TransientError as exc:
                error, unanswered = str(exc), True
                if not await self._outage.counts():
                    continue  # the server is away: this try does not count
            except PermanentError as exc:
                return self._with_billed(Result(request, error=str(exc)), billed)
            except UserError:
                raise  # the server refuses every request (a key, a model to fix): the run stops
            except Exception as exc:  # an unforeseen backend failure: one request's problem, not the run's
                error, unanswered = f"backend_error: {type(exc).__name__}: {exc}", True
            else:
                self._outage.answered()
                result = self._with_billed(self._result(request, completion, cached=False), billed)
                if result.ok:
                    return result
                billed = Completion("", prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
                error, unanswered, redraws = result.error, False, redraws + 1
            tries += 1
            if tries > self.max_retries:
                return self._with_billed(Result(request, error=f"{error} (after {tries} tries)", unanswered=unanswered),
                                         billed)
            # Exponential backoff with full jitter, taken outside the concurrency limit.
            await asyncio.sleep(random.uniform(0, self.backoff_s * 2 ** (tries - 1)))

    @staticmethod
    def _result(request: Request, completion: Completion, *, cached: bool) -> Result:
        result = Result(
            request,
            text=completion.text,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cached=cached,
        )
        if request.schema is not None:
            try:
                result.parsed = parse_json(request.schema, completion.text)
            except ValidationError as exc:
                first = exc.errors()[0]
                result.error = f"invalid_json: {first['msg']} at {'.'.join(map(str, first['loc'])) or 'top'}"
        return result

    @staticmethod
    def _with_billed(result: Result, billed: Completion) -> Result:
        result.prompt_tokens += billed.prompt_tokens
        result.completion_tokens += billed.completion_tokens
        return result

    @staticmethod
    def _completion_fields(result: Result) -> dict[str, Any]:
        return {
            "text": result.text,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }

    async def _cancel_all(self) -> None:
        self._outage.stop(UserError("the run was stopped"))
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def abort(self) -> None:
        """Stop every request now (a failed or interrupted run): what waits, even out an outage, raises;
        what is in flight is cancelled. Threads waiting in `run` get their answer at once."""
        asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop).result()

    def close(self) -> None:
        """Cancel what is still in flight, then release the backend."""

        async def shutdown() -> None:
            await self._cancel_all()
            await self.backend.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        if self.cache:
            self.cache.close()
