"""Offline batch generation with `vllm.LLM` on a GPU machine (the `gpu` extra).

Requests that arrive together are batched into one `LLM.chat` call, which is
where vLLM's throughput comes from. Kept thin, on vLLM's documented API
(SamplingParams + StructuredOutputsParams, vLLM >= 0.12).
"""

from __future__ import annotations

import asyncio
from typing import Any

from germinate.llm.base import Backend, Completion, Request


class VLLMBackend(Backend):
    def __init__(self, model: str, max_model_len: int):
        from vllm import LLM

        self.model = model
        self.location = f"vllm.LLM({model})"
        self._llm = LLM(model=model, max_model_len=max_model_len)
        self._pending: list[tuple[Request, dict[str, Any] | None, asyncio.Future]] = []
        self._busy = asyncio.Lock()  # vllm.LLM is not thread-safe: one batch at a time

    async def complete(self, request: Request, schema: dict[str, Any] | None) -> Completion:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, schema, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0.005)  # let the rest of a gather() join this batch
        batch, self._pending = self._pending, []
        try:
            async with self._busy:
                outputs = await asyncio.to_thread(
                    self._llm.chat,
                    [request.messages for request, _, _ in batch],
                    [self._sampling_params(request, schema) for request, schema, _ in batch],
                    use_tqdm=False,
                )
        except Exception as exc:  # fail the whole batch; the LLM layer retries each request
            for _, _, future in batch:
                future.set_exception(exc)
            return
        for (_, _, future), output in zip(batch, outputs):
            generated = output.outputs[0]
            future.set_result(
                Completion(
                    text=generated.text,
                    finish_reason=generated.finish_reason,
                    prompt_tokens=len(output.prompt_token_ids or []),
                    completion_tokens=len(generated.token_ids),
                )
            )

    @staticmethod
    def _sampling_params(request: Request, schema: dict[str, Any] | None) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        return SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            structured_outputs=StructuredOutputsParams(json=schema) if schema else None,
        )
