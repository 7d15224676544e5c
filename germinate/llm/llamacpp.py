"""The embedded default: a GGUF model in-process through llama-cpp-python (germinate.llm.gguf says
which file)."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from germinate.llm.base import Backend, Completion, Request
from germinate.llm.errors import PermanentError


class LlamaCppBackend(Backend):
    def __init__(self, model_path: Path, n_ctx: int = 2048):
        from llama_cpp import Llama

        self.model = model_path.name
        self.location = str(model_path)
        self._llama = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=os.cpu_count() or 1,
            verbose=False,
        )
        # One llama context decodes one sequence at a time: one thread owns it, and requests queue
        # for it (threads waiting on a lock instead slowed decoding down by a third here).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")

    async def complete(self, request: Request, schema: dict[str, Any] | None) -> Completion:
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._complete, request, schema)

    async def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _complete(self, request: Request, schema: dict[str, Any] | None) -> Completion:
        response_format = {"type": "json_object", "schema": schema} if schema else None
        # Evaluate every prompt from scratch: reusing the previous prompt's KV prefix changes
        # the numerics, and so the sample, with the order of requests. Reruns must match.
        self._llama.reset()
        try:
            out = self._llama.create_chat_completion(
                messages=request.messages,
                response_format=response_format,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=request.seed,
            )
        except ValueError as exc:  # the prompt does not fit the context window
            raise PermanentError(f"context_overflow: {exc}") from None
        choice = out["choices"][0]
        return Completion(
            text=choice["message"]["content"] or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=out["usage"]["prompt_tokens"],
            completion_tokens=out["usage"]["completion_tokens"],
        )
