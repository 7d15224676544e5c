"""Any OpenAI-compatible server (vLLM's `vllm serve`, OpenAI, llama.cpp's server...)."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import openai

from germinate.errors import UserError
from germinate.llm.base import PING, Backend, Completion, Request
from germinate.llm.errors import PermanentError, ServerDown, ServerRefused, TransientError

Dialect = Literal["json_schema", "json_object"]

# Answers that no retry changes: the key, the model or the URL is wrong for every request.
REFUSALS = {
    401: "the server wants another API key (llm.api_key_env names its variable)",
    403: "the server wants another API key (llm.api_key_env names its variable)",
    404: "no such model or endpoint there (llm.model, llm.base_url)",
    501: "the server does not serve chat completions",
}


def _detail(body: object, fallback: str) -> str:
    """The server's own words: OpenAI-style {"error": {"message": ...}} or {"message": ...}, clipped."""
    if isinstance(body, dict):
        body = body.get("error", body)
    message = body.get("message") if isinstance(body, dict) else None
    return " ".join(str(message or fallback).split())[:200]


def refused(base_url: str, code: int, detail: str) -> ServerRefused:
    return ServerRefused(
        f"llm: {base_url.rstrip('/')}/chat/completions answered HTTP {code} ({detail}): {REFUSALS[code]}"
    )


def ping_server(base_url: str, api_key: str | None, model: str, timeout_s: float = 10.0) -> None:
    """Ask for one token, so a server that lists models but refuses chat (a wrong key, a wrong model)
    stops the run before anything is written. Any other answer, or none yet, is for the run to handle."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "messages": PING.messages, "max_tokens": PING.max_tokens, "temperature": 0}
    try:
        response = httpx.post(base_url.rstrip("/") + "/chat/completions", json=body, headers=headers,
                              timeout=timeout_s)
    except httpx.HTTPError:
        return
    if response.status_code in REFUSALS:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        raise refused(base_url, response.status_code, _detail(payload, response.reason_phrase))


def probe_server(base_url: str, api_key: str | None, timeout_s: float = 10.0) -> tuple[list[str], Dialect]:
    """List the server's models and guess how it takes a JSON schema. Unreachable is a user error."""
    url = base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=timeout_s)
        response.raise_for_status()
        models = response.json()["data"]
    except httpx.HTTPStatusError as exc:
        raise UserError(f"llm.base_url: {url} answered HTTP {exc.response.status_code}") from None
    except httpx.HTTPError as exc:
        raise UserError(f"llm.base_url: cannot reach {url} ({type(exc).__name__}: {exc})") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"llm.base_url: {url} is not an OpenAI-compatible models list") from None
    # llama-cpp-python's server marks its models owned_by "me" and rejects "json_schema" (HTTP 500);
    # vLLM and OpenAI take "json_schema".
    llamacpp = any(m.get("owned_by") in ("me", "llamacpp") for m in models)
    return [m["id"] for m in models], "json_object" if llamacpp else "json_schema"


class OpenAIBackend(Backend):
    def __init__(self, base_url: str, model: str, api_key: str | None, dialect: Dialect, timeout_s: float):
        self.model = model
        self.base_url = self.location = base_url
        self._api_key = api_key or "unused"  # local servers take any key; the client wants one
        self._dialect = dialect
        self._timeout_s = timeout_s
        self._client: openai.AsyncOpenAI | None = None

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self._dialect == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": schema.get("title", "output"), "schema": schema}}

    async def complete(self, request: Request, schema: dict[str, Any] | None) -> Completion:
        if self._client is None:  # made on the LLM's loop, which its connections belong to
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key, timeout=self._timeout_s, max_retries=0
            )
        extra = {"response_format": self._response_format(schema)} if schema else {}
        try:
            response = await self._client.chat.completions.create(
                model=self.model,
                messages=request.messages,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=request.seed,
                **extra,
            )
        except openai.APITimeoutError:
            raise ServerDown(f"timeout: no answer within {self._timeout_s:g}s") from None
        except openai.APIConnectionError as exc:
            # openai's HTTP client (httpx2) raises ConnectError when nothing listens there
            refused_connection = type(exc.__cause__).__name__ == "ConnectError"
            raise ServerDown(f"connection: {exc}", refused=refused_connection) from None
        except openai.APIStatusError as exc:
            code, detail = exc.status_code, _detail(exc.body, exc.message)
            if code in REFUSALS:
                raise refused(self.base_url, code, detail) from None
            if code == 429:  # alive, only busy: back off, but keep it in rotation
                raise TransientError(f"http_429: {detail}") from None
            if code >= 500:
                raise ServerDown(f"http_{code}: {detail}") from None
            raise PermanentError(f"http_{code}: {detail}") from None
        except (openai.APIResponseValidationError, json.JSONDecodeError) as exc:
            raise TransientError(f"bad_response: {exc}") from None
        if not response.choices:
            raise TransientError("bad_response: no choices")
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
