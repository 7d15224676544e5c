"""The offline vLLM backend. Needs a GPU, the `gpu` extra and a local model
(GERMINATE_VLLM_MODEL=/path/or/name); skips otherwise, as it always does in CI."""

import os

import pytest
from pydantic import BaseModel

from germinate.llm import Request, make_llm
from germinate.settings import LLMConfig

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")
MODEL = os.environ.get("GERMINATE_VLLM_MODEL")
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and MODEL), reason="needs a GPU and GERMINATE_VLLM_MODEL")


class Capital(BaseModel):
    country: str
    capital: str


def test_batch_with_structured_output():
    llm = make_llm(LLMConfig(backend="vllm", model=MODEL, n_ctx=2048), cache_path=None)
    try:
        prompt = [{"role": "user", "content": "Name a country and its capital as JSON."}]
        results = llm.run(llm.generate([Request(prompt, schema=Capital, max_tokens=64, seed=i) for i in range(8)]))
    finally:
        llm.close()
    assert all(r.ok and isinstance(r.parsed, Capital) for r in results)
