"""Any OpenAI-compatible server (vLLM's `vllm serve`, OpenAI, llama.cpp's server...) over aiohttp.

One HTTP path for every server, and the hot path of a run: one aiohttp session per server,
a request body encoded once with orjson, the answer decoded once. The openai SDK spent
4-6 ms of CPU per request at 256 in flight (its httpx pool scans every connection), and
over its own aiohttp transport still ran at about half a raw aiohttp loop's rate
(bench/llm_throughput.py); this client is that raw loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import aiohttp
import orjson

from germinate.errors import UserError
from germinate.llm.base import Backend, Completion, Request
from germinate.llm.errors import PermanentError, ServerDown, ServerRefused, TransientError

Dialect = Literal["json_schema", "json_object"]

# Answers that no retry changes: the key, the model or the URL is wrong for every request.
REFUSALS = {
    401: "the server wants another API key (llm.api_key_env names its variable)",
    403: "the server wants another API key (llm.api_key_env names its variable)",
    404: "no such model or endpoint there (llm.model, llm.base_url)",
    501: "the server does not serve chat completions",
}


def _detail(raw: bytes, fallback: str) -> str:
    """The server's own words: OpenAI-style {"error": {"message": ...}} or {"message": ...}, clipped."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        body = body.get("error", body)
    message = body.get("message") if isinstance(body, dict) else None
    return " ".join(str(message or fallback).split())[:200]


def refused(base_url: str, code: int, detail: str) -> ServerRefused:
    return ServerRefused(
        f"llm: {base_url.rstrip('/')}/chat/completions answered HTTP {code} ({detail}): {REFUSALS[code]}"
    )


class OpenAIBackend(Backend):
    def __init__(self, base_url: str, model: str, api_key: str | None, dialect: Dialect, timeout_s: float):
        self.model = model
        self.base_url = self.location = base_url
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._dialect = dialect
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self._dialect == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": schema.get("title", "output"), "schema": schema}}

    async def _post(self, body: dict[str, Any]) -> tuple[int, bytes]:
        if self._session is None:  # made on the LLM's loop, which its connections belong to
            self._session = aiohttp.ClientSession(
                # The LLM layer bounds requests in flight; the pool must not bound them again.
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            )
        try:
            async with self._session.post(self._url, data=orjson.dumps(body), headers=self._headers) as response:
                return response.status, await response.read()
        except asyncio.TimeoutError:
            raise ServerDown(f"timeout: no answer within {self._timeout_s:g}s") from None
        except aiohttp.ClientConnectorError as exc:  # nothing listens there, or no route to it
            raise ServerDown(f"connection: {exc.strerror or exc}", refused=True) from None
        except aiohttp.ClientError as exc:  # dropped on the way: a server that died, a reset connection
            raise ServerDown(f"connection: {type(exc).__name__}: {exc}".rstrip(": ")) from None

    async def complete(self, request: Request, schema: dict[str, Any] | None) -> Completion:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        if schema:
            body["response_format"] = self._response_format(schema)
        status, raw = await self._post(body)
        if status != 200:
            detail = _detail(raw, f"HTTP {status}")
            if status in REFUSALS:
                raise refused(self.base_url, status, detail)
            if status == 429:  # alive, only busy: back off, but keep it in rotation
                raise TransientError(f"http_429: {detail}")
            if status >= 500:
                raise ServerDown(f"http_{status}: {detail}")
            raise PermanentError(f"http_{status}: {detail}")
        try:
            answer = orjson.loads(raw)
            choice = answer["choices"][0]
            usage = answer.get("usage") or {}
            return Completion(
                text=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=usage.get("prompt_tokens") or 0,
                completion_tokens=usage.get("completion_tokens") or 0,
            )
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise TransientError(f"bad_response: not a chat completion: {raw[:120]!r}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _models(base_url: str, api_key: str | None, timeout_s: float) -> tuple[list[str], Dialect]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        try:
            async with session.get(url) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise UserError(f"llm.base_url: cannot reach {url} ({type(exc).__name__}: {exc})") from None
        if status != 200:
            raise UserError(f"llm.base_url: {url} answered HTTP {status}")
        try:
            models = orjson.loads(raw)["data"]
            names = [m["id"] for m in models]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"llm.base_url: {url} is not an OpenAI-compatible models list") from None
        # llama-cpp-python's server marks its models owned_by "me" and rejects "json_schema" (HTTP 500);
        # vLLM and OpenAI take "json_schema".
        llamacpp = any(m.get("owned_by") in ("me", "llamacpp") for m in models)
        return names, "json_object" if llamacpp else "json_schema"


def probe_server(base_url: str, api_key: str | None, timeout_s: float = 10.0) -> tuple[list[str], Dialect]:
    """List the server's models and guess how it takes a JSON schema. Unreachable is a user error."""
    return asyncio.run(_models(base_url, api_key, timeout_s))


def ping_server(base_url: str, api_key: str | None, model: str, timeout_s: float = 10.0) -> None:
    """Ask for one token, so a server that lists models but refuses chat (a wrong key, a wrong model)
    stops the run before anything is written. Any other answer, or none yet, is for the run to handle."""

    async def ping() -> None:
        backend = OpenAIBackend(base_url, model, api_key, "json_schema", timeout_s)
        try:
            await backend.ping()
        except (TransientError, PermanentError):
            pass
        finally:
            await backend.close()

    asyncio.run(ping())
