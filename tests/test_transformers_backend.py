"""The transformers backend: the SmolLM2 GGUF from PyPI, in this process, several requests decoded together."""

import asyncio
import json

import pytest
from pydantic import BaseModel

from germinate.llm import make_llm
from germinate.llm.base import Request, json_schema
from germinate.llm.transformers_backend import TransformersBackend
from germinate.llm.errors import PermanentError
from germinate.llm.gguf import default_model_path
from germinate.settings import LLMConfig


class Task(BaseModel):
    instruction: str
    difficulty: int


class TitledTask(BaseModel):
    title: str
    instruction: str


@pytest.fixture(scope="module")
def backend():
    backend = TransformersBackend(default_model_path(), n_ctx=512)
    yield backend
    asyncio.run(backend.close())


def ask(topic: str, seed: int, schema: bool) -> tuple[Request, dict | None]:
    request = Request([{"role": "user", "content": f"Write one new task about {topic}."}], max_tokens=24, seed=seed)
    return request, (json_schema(Task) if schema else None)


REQUESTS = [ask(topic, seed, schema=seed % 2 == 1) for seed, topic in
            enumerate(["rivers", "prime numbers", "bread", "sorting a list", "the moon", "tax forms"])]


def test_an_answer_is_the_same_alone_and_among_other_requests(backend):
    """A run's requests meet in batches by timing: what one request samples must not depend on it."""

    async def alone():
        return [await backend.complete(*request) for request in REQUESTS]

    async def together(requests):
        return await asyncio.gather(*(backend.complete(*request) for request in requests))

    single = asyncio.run(alone())
    crowd = asyncio.run(together(REQUESTS + [ask("volcanoes", 99, schema=True)]))
    reversed_crowd = asyncio.run(together(REQUESTS[::-1]))[::-1]
    assert [c.text for c in crowd[:-1]] == [c.text for c in single] == [c.text for c in reversed_crowd]
    assert len({c.text for c in single}) == len(single)  # the seeds and prompts differ, so do the answers
    for completion, (_, schema) in zip(single, REQUESTS):
        assert completion.prompt_tokens > 10 and 0 < completion.completion_tokens <= 24
        if schema and completion.finish_reason == "stop":  # constrained: a finished answer is the schema's JSON
            Task.model_validate(json.loads(completion.text))


def test_the_tokens_a_schema_forces_are_read_at_once_without_changing_the_answer(backend, monkeypatch):
    """A JSON key and its punctuation are taken without a step each and read in one forward after the
    token sampled before them. They must see exactly the keys before them: greedy answers equal the
    answers decoded one token at a time (the backend below has the shortcut turned off). The text
    written after the second key is what would change if they did not."""
    requests = [Request([{"role": "user", "content": f"Write one new task about {topic}, as JSON."}],
                        max_tokens=40, temperature=0.0) for topic in ("rivers", "tax forms")]
    schema = json_schema(TitledTask)

    async def answers(backend):
        return await asyncio.gather(*(backend.complete(request, schema) for request in requests))

    shortcut = asyncio.run(answers(backend))
    monkeypatch.setattr(TransformersBackend, "_forced", lambda self, sequence: [])
    stepwise_backend = TransformersBackend(default_model_path(), n_ctx=512)
    try:
        stepwise = asyncio.run(answers(stepwise_backend))
    finally:
        asyncio.run(stepwise_backend.close())
    assert [a.text for a in shortcut] == [a.text for a in stepwise]
    assert all(a.text.startswith('{"title": "') and '", "instruction": "' in a.text for a in shortcut)
    assert [a.completion_tokens for a in shortcut] == [a.completion_tokens for a in stepwise]


def test_a_system_message_is_read_once_and_changes_no_answer(backend):
    """The requests of a run share their system message: its keys are computed once, alone, and copied.
    An answer must not depend on which request needed them first (here: itself, or another before it
    on a second backend)."""
    from germinate.prompts import SYSTEM

    def ask_with_system(topic: str, seed: int):
        user = f"Write one new task about {topic}."
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        return Request(messages, max_tokens=24, seed=seed), None

    first = asyncio.run(backend.complete(*ask_with_system("rivers", 1)))
    other = TransformersBackend(default_model_path(), n_ctx=512)
    try:
        asyncio.run(other.complete(*ask_with_system("bread", 2)))
        again = asyncio.run(other.complete(*ask_with_system("rivers", 1)))
        assert list(other._system_parts) == [SYSTEM]
    finally:
        asyncio.run(other.close())
    assert again.text == first.text and again.prompt_tokens == first.prompt_tokens


def test_a_prompt_longer_than_the_context_fails_alone(backend):
    long = Request([{"role": "user", "content": "word " * 600}], max_tokens=8)

    async def both():
        return await asyncio.gather(backend.complete(long, None), backend.complete(*REQUESTS[0]),
                                    return_exceptions=True)

    failed, answered = asyncio.run(both())
    assert isinstance(failed, PermanentError) and str(failed).startswith("context_overflow: the prompt has ")
    assert answered.completion_tokens > 0


def test_a_run_can_choose_it():
    """`llm.backend: transformers` through the LLM layer: the schema's JSON comes back parsed."""
    llm = make_llm(LLMConfig(backend="transformers", max_retries=2), cache_path=None)
    try:
        request = Request([{"role": "user", "content": "Write one new task about rivers, as JSON."}], schema=Task,
                          max_tokens=160, seed=3)
        [result] = llm.run(llm.generate([request]))
    finally:
        llm.close()
    assert result.ok, result.error
    assert isinstance(result.parsed, Task) and result.parsed.instruction
    assert result.text.startswith('{"instruction": ')  # the schema's order, not the alphabet's
    assert llm.model == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_the_4bit_weights_multiply_as_the_float_weights_do(backend):
    """The shipped GGUF is Q4_1: a sampled token's rows go through torch's 4-bit kernel, which must
    give what the float weights give, to bfloat16's precision. Weights that are not 4-bit (the Q8_0
    output layer, a float layer) keep the float product."""
    import torch
    import torch.nn.functional as F

    from germinate.llm.transformers_backend import _four_bit, _four_bit_rows_alone, _packed

    asyncio.run(backend.complete(*REQUESTS[0]))  # the model is loaded
    layer = backend._net.model.layers[0].mlp.down_proj
    if layer.weight.dtype != torch.float32 or not _four_bit_rows_alone(*layer.weight.shape):
        pytest.skip("on this CPU the model computes in bfloat16 (AVX512-BF16, AMX), or torch's 4-bit kernel is "
                    "missing or gives a row among others other numbers than alone: the layers keep the float product")
    x = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        packed = _packed(layer)
        assert packed is not None
        exact = F.linear(x, layer.weight)
        assert torch.allclose(_four_bit(x, packed), exact, atol=0.01 * exact.abs().max().item())
        assert _packed(backend._net.lm_head) is None and _packed(torch.nn.Linear(64, 64, bias=False)) is None
