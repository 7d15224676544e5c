"""The openai backend against a real OpenAI-compatible server: llama-cpp-python's server
(`python -m llama_cpp.server`) serving the same SmolLM2 GGUF on loopback."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from conftest import GATE_OFF, TINY_SEEDS, tiny_config
from germinate.driver import run_here
from germinate.llm import Request, check_llm, make_llm
from germinate.llm.gguf import default_model_path
from germinate.settings import LLMConfig


class Topic(BaseModel):
    topic: str
    keywords: list[str]


@pytest.fixture(scope="module")
def llama_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            try:
                if httpx.get(base_url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        else:
            pytest.fail("llama_cpp.server did not start")
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_dialect_is_detected_and_structured_output_parses(llama_server):
    config = check_llm(LLMConfig(backend="openai", base_url=llama_server))
    assert config.structured_output == "json_object"  # llama.cpp rejects "json_schema"
    assert config.model  # the server's model, found by asking it
    llm = make_llm(config, cache_path=None)
    try:
        prompt = [{"role": "user", "content": "Name the topic and three keywords of: 'Sort a list in Python.'"}]
        results = llm.run(llm.generate([Request(prompt, schema=Topic, max_tokens=80, temperature=0.0),
                                        Request(prompt, max_tokens=16)]))
    finally:
        llm.close()
    structured, plain = results
    assert structured.ok, structured.error
    assert isinstance(structured.parsed, Topic) and structured.parsed.topic
    assert plain.ok and plain.text and plain.completion_tokens > 0


def test_pipeline_runs_against_the_server(llama_server, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in TINY_SEEDS[:2]))
    config = tiny_config(seeds, tmp_path / "runs", llm={"backend": "openai", "base_url": llama_server},
                         aide__hops=1, aide__personas=0, aide__on_reflection_fail="keep",
                         budget__max_llm_calls=12, budget__max_records=6, quality=GATE_OFF)
    report = run_here(config)
    expand, respond = report.stages
    assert expand.llm_calls >= 4 and expand.failed_calls == 0  # every JSON answer parsed
    assert respond.llm_calls == respond.records_in and respond.failed_calls == 0  # the seeds are not rows
    assert report.llm_calls <= 12
    rows = pq.read_table(Path(report.dataset) / "data").to_pylist()
    assert len(rows) == report.rows and {r["strategy"] for r in rows} == {"aide"}
    assert all(r["output"] for r in rows)
