"""The LLM layer against a real HTTP server on loopback that misbehaves on purpose."""

import logging
import multiprocessing
import time

import pytest
from pydantic import BaseModel, ValidationError

from germinate.llm import LLM, Request
from germinate.llm.base import parse_json
from germinate.llm.cache import ResponseCache
from germinate.llm.cap import TokenCap
from germinate.llm.errors import ServerLost, ServerRefused
from germinate.llm.openai_compat import OpenAIBackend
from germinate.settings import BudgetConfig
from germinate.stats import Usage
from servers import FaultyServer


class Answer(BaseModel):
    instruction: str
    score: int


def requests(n: int) -> list[Request]:
    return [Request([{"role": "user", "content": f"task {i}"}], schema=Answer, max_tokens=32) for i in range(n)]


def layer(server: FaultyServer, cache_path=None, concurrency: int = 8, max_retries: int = 3,
          outage_timeout_s: float = 30) -> LLM:
    backend = OpenAIBackend(server.base_url, "faulty-model", None, "json_schema", timeout_s=server.timeout_s)
    cache = ResponseCache(cache_path) if cache_path else None
    return LLM(backend, cache, concurrency=concurrency, max_retries=max_retries, backoff_s=0.01,
               outage_timeout_s=outage_timeout_s)


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
        assert result.error == "http_500: boom (after 4 tries)" and result.unanswered
    for result in results:
        if result.ok:
            assert isinstance(result.parsed, Answer)
    assert usage.calls == 80 and usage.failed == usage.unanswered == len(failed)
    assert usage.errors == {"http_500": len(failed)}
    # every answer that came back is billed, the invalid ones asked again too
    assert usage.prompt_tokens == 11 * (80 - len(failed) + server.faults["broken_json"])


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
    # Closed, the cache is all in its main file: a copied run directory carries it whole.
    wal = tmp_path / "cache.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def _open_and_answer(path, barrier, key, answers):
    barrier.wait()
    try:
        cache = ResponseCache(path)
        cache.put(key, {"text": key})
        cache.close()
        answers.put(key)
    except Exception as error:  # the parent names what went wrong
        answers.put(repr(error))


def test_workers_opening_one_new_cache_at_once_all_keep_their_answers(tmp_path):
    """Ray's shard workers open the run's cache together; one once died of "database is locked"."""
    context = multiprocessing.get_context("fork")
    for trial in range(15):
        path = tmp_path / f"cache-{trial}.sqlite"
        barrier, answers = context.Barrier(6), context.Queue()
        workers = [context.Process(target=_open_and_answer, args=(path, barrier, f"k{n}", answers))
                   for n in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert sorted(answers.get(timeout=5) for _ in workers) == [f"k{n}" for n in range(6)]
        cache = ResponseCache(path)
        assert [cache.get(f"k{n}") for n in range(6)] == [{"text": f"k{n}"} for n in range(6)]
        cache.close()


def test_invalid_json_is_retried_with_a_new_seed():
    with FaultyServer(fail_share=1.0, kinds=("broken_json",)) as server:
        llm = layer(server, max_retries=1)
        try:
            results = llm.run(llm.generate(requests(40)))
        finally:
            llm.close()
    assert server.faults["broken_json"] == 40
    assert all(r.ok for r in results)
    assert all(len(set(tries)) == 2 for tries in server.seeds.values())  # a deterministic sampler would repeat it


def test_a_try_the_server_did_not_answer_keeps_its_seed():
    """Reproducible under faults: 429, 5xx and timeouts change nothing in what is asked."""
    with FaultyServer(fail_share=1.0, kinds=("rate_limit", "server_error", "slow"), timeout_s=0.3) as server:
        llm = layer(server)
        try:
            results = llm.run(llm.generate(requests(30)))
        finally:
            llm.close()
    assert all(r.ok for r in results)
    tried = [seeds for seeds in server.seeds.values() if len(seeds) > 1]
    assert len(tried) >= 30 and all(len(set(seeds)) == 1 for seeds in tried)


def test_without_retries_a_fault_is_final():
    with FaultyServer(fail_share=1.0, timeout_s=0.3) as server:
        llm = layer(server, max_retries=0)
        try:
            results = llm.run(llm.generate(requests(20)))
        finally:
            llm.close()
    errors = {r.error.split(":")[0] for r in results if not r.ok}
    assert errors <= {"http_429", "http_500", "timeout", "invalid_json"} and len(errors) >= 3


def test_an_outage_pauses_the_requests_and_they_go_on_when_the_server_is_back(caplog):
    """The server goes down after 10 requests, for 2 s: no request spends its retries on the outage
    (one try each would not survive it), the layer says once that it waits, and every request is answered."""
    with FaultyServer(delay_s=0.02, outage_after=10, outage_s=2.0) as server:
        llm = layer(server, max_retries=1)
        usage = Usage()
        try:
            with caplog.at_level(logging.WARNING, logger="germinate.llm"):
                started = time.monotonic()
                results = llm.run(llm.generate(requests(40)), usage)
        finally:
            llm.close()
    assert all(r.ok for r in results) and usage.failed == 0
    assert time.monotonic() - started >= 2.0
    said = [r.getMessage() for r in caplog.records]
    assert sum("stopped answering" in m for m in said) == 1 and sum("answers again" in m for m in said) == 1
    assert f"{server.base_url} stopped answering" in said[0] and "up to 30s (llm.outage_timeout_s)" in said[0]


def test_a_server_gone_for_good_stops_the_run_after_the_patience():
    with FaultyServer(outage_after=5) as server:
        llm = layer(server, outage_timeout_s=1.5)
        try:
            with pytest.raises(ServerLost, match=rf"llm: {server.base_url} did not answer for 1.5s"):
                llm.run(llm.generate(requests(20)))
        finally:
            llm.close()


def test_a_server_that_refuses_chat_stops_the_run_at_once():
    with FaultyServer(chat_status=401) as server:
        llm = layer(server)
        try:
            with pytest.raises(ServerRefused, match=rf"{server.base_url}/chat/completions answered HTTP 401 "
                                                    r"\(not for you\): .*llm.api_key_env"):
                llm.run(llm.generate(requests(5)))
        finally:
            llm.close()
    assert server.requests <= 5  # not retried


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


def test_a_token_cap_holds_only_what_is_in_flight_and_counts_every_answer_billed():
    """A cap keeps back the requests that could pass it, not those merely queued for a slot; the tokens
    of an answer that came back invalid (and was asked again) are billed, counted and reported."""
    worst = sum(TokenCap.worst(requests(1)[0]))
    with FaultyServer(fail_share=1.0, kinds=("broken_json",)) as server:  # every request's first answer
        llm = layer(server, concurrency=2)
        # 20 requests of two tries cost 640 tokens, with 2 tries in flight holding their worst case;
        # all 20 held at once, as they wait for a slot, would not fit
        cap = TokenCap(BudgetConfig(max_tokens=640 + 2 * worst), part=1.0)
        assert 20 * worst > 640 + 2 * worst
        try:
            results = llm.run(llm.generate(requests(20)), cap=cap)
        finally:
            llm.close()
    assert all(r.ok for r in results)  # 20 requests queued behind 2 slots: none held before it is sent
    assert {(r.prompt_tokens, r.completion_tokens) for r in results} == {(22, 10)}  # two tries, both billed
    assert (cap.prompt_tokens, cap.completion_tokens, cap.held_prompt) == (440, 200, 0)
    with FaultyServer() as server:
        llm = layer(server, concurrency=2)
        cap = TokenCap(BudgetConfig(max_tokens=worst + 32), part=1.0)  # room for one try in flight, then its cost
        try:
            results = llm.run(llm.generate(requests(20)), cap=cap)
        finally:
            llm.close()
    kept_back = [r for r in results if r.error and r.error.startswith("over_budget: sending it would pass budget.max_tokens")]
    assert kept_back and all(r.unanswered for r in kept_back)
    assert cap.prompt_tokens + cap.completion_tokens <= worst + 32
