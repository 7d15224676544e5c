"""The LLM layer against a real HTTP server on loopback that misbehaves on purpose."""

import pytest
from pydantic import BaseModel, ValidationError

from germinate.llm import LLM, Request
from germinate.llm.base import parse_json
from germinate.llm.cache import ResponseCache
from germinate.llm.openai_compat import OpenAIBackend
from germinate.stats import Usage
from servers import FaultyServer


class Answer(BaseModel):
    instruction: str
    score: int


def requests(n: int) -> list[Request]:
    return [Request([{"role": "user", "content": f"task {i}"}], schema=Answer, max_tokens=32) for i in range(n)]


def layer(server: FaultyServer, cache_path=None, concurrency: int = 8, max_retries: int = 3) -> LLM:
    backend = OpenAIBackend(server.base_url, "faulty-model", None, "json_schema", timeout_s=server.timeout_s)
    cache = ResponseCache(cache_path) if cache_path else None
    return LLM(backend, cache, concurrency=concurrency, max_retries=max_retries, backoff_s=0.01)


def test_retries_turn_transient_faults_into_answers_and_report_the_rest():
    with FaultyServer(fail_share=0.6, dead_share=0.15, timeout_s=1.0) as server:
        llm = layer(server)
        usage = Usage()
        try:
            results = llm.run(llm.generate(requests(80)), usage)
        finally:
            llm.close()
    assert all(server.faults[f] > 0 for f in server.faults), server.faults  # every fault kind was served
    failed = [r for r in results if not r.ok]
    assert 0 < len(failed) < 30
    for result in failed:  # dead requests: an error after the last try, not an exception
        assert result.error == "server_error: HTTP 500 (after 4 tries)"
    for result in results:
        if result.ok:
            assert isinstance(result.parsed, Answer)
    assert usage.calls == 80 and usage.failed == len(failed)
    assert usage.prompt_tokens == 11 * (80 - len(failed))


def test_concurrency_is_bounded():
    with FaultyServer(delay_s=0.05) as server:
        llm = layer(server, concurrency=3)
        try:
            results = llm.run(llm.generate(requests(24)))
        finally:
            llm.close()
    assert all(r.ok for r in results)
    assert server.max_in_flight == 3


def test_cache_answers_a_rerun_without_a_request(tmp_path):
    with FaultyServer() as server:
        for attempt in range(2):
            llm = layer(server, cache_path=tmp_path / "cache.sqlite")
            usage = Usage()
            try:
                results = llm.run(llm.generate(requests(10)), usage)
            finally:
                llm.close()
            assert all(r.ok for r in results)
            assert usage.cached == (10 if attempt else 0)
        assert server.requests == 10


def test_invalid_json_is_retried_with_a_new_seed():
    with FaultyServer(fail_share=1.0, kinds=("broken_json",)) as server:
        llm = layer(server, max_retries=1)
        try:
            results = llm.run(llm.generate(requests(40)))
        finally:
            llm.close()
    assert server.faults["broken_json"] == 40
    assert all(r.ok for r in results)


def test_without_retries_a_fault_is_final():
    with FaultyServer(fail_share=1.0, timeout_s=0.3) as server:
        llm = layer(server, max_retries=0)
        try:
            results = llm.run(llm.generate(requests(20)))
        finally:
            llm.close()
    errors = {r.error.split(":")[0] for r in results if not r.ok}
    assert errors <= {"rate_limited", "server_error", "timeout", "invalid_json"} and len(errors) >= 3


def test_parse_json_takes_a_raw_newline_in_a_string_and_names_real_faults():
    """llama.cpp's JSON grammar let a judge write a newline inside its critique: that is
    still the answer the schema asked for. A truncated or incomplete object is not."""

    class Judgement(BaseModel):
        critique: str
        score: int

    assert parse_json(Judgement, 'Sure: {"critique": "too short\nand vague", "score": 3}').critique == "too short\nand vague"
    for broken, fault in (('{"critique": "a", "score": ', "Invalid JSON"), ('{"critique": "a"}', "Field required")):
        with pytest.raises(ValidationError, match=fault):
            parse_json(Judgement, broken)
