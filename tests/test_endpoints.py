"""Several OpenAI-compatible servers of one model behind one LLM: real HTTP servers on loopback."""

import asyncio
import logging

import pytest
from test_cli import free_port
from test_llm import requests

from germinate.errors import UserError
from germinate.llm import check_llm, make_llm
from germinate.llm.endpoints import FAILURES_TO_LEAVE
from germinate.llm.limit import Limit
from germinate.settings import LLMConfig
from servers import FaultyServer

PING = 1  # each server answering at the start is asked for one token first (a refusal stops the run there)


def generate(config: LLMConfig, n: int):
    llm = make_llm(config, None)
    try:
        return llm.run(llm.generate(requests(n)))
    finally:
        llm.close()


def endpoints(*urls: str, concurrency: int = 2) -> LLMConfig:
    return LLMConfig(backend="openai", endpoints=[{"base_url": u, "concurrency": concurrency} for u in urls],
                     backoff_s=0.01, cache=False)


def test_requests_spread_over_the_servers_within_each_ones_limit():
    with FaultyServer(delay_s=0.1) as a, FaultyServer(delay_s=0.1) as b:
        results = generate(endpoints(a.base_url, b.base_url, concurrency=3), 24)
    assert all(r.ok for r in results)
    assert a.requests + b.requests == 24 + 2 * PING and abs(a.requests - b.requests) <= 4
    assert a.max_in_flight == b.max_in_flight == 3  # each server's own limit, and both used at once


def test_a_failing_server_leaves_the_rotation_and_the_others_answer():
    with FaultyServer(dead_share=1.0) as dead, FaultyServer() as alive:
        results = generate(endpoints(dead.base_url, alive.base_url), 30)
    assert all(r.ok for r in results)  # every request was retried on the live server
    # it got at most its failures in a row plus the requests already in flight there
    assert dead.requests <= PING + FAILURES_TO_LEAVE + 2 and alive.requests >= 30


def test_a_server_that_stops_mid_run_is_taken_out_at_once(caplog):
    with FaultyServer() as alive:
        stopping = FaultyServer()
        with stopping:
            llm = make_llm(endpoints(stopping.base_url, alive.base_url, concurrency=1), None)
        try:  # `stopping` has closed its port: the first refused connection takes it out
            with caplog.at_level(logging.WARNING, logger="germinate.llm.endpoints"):
                results = llm.run(llm.generate(requests(12)))
        finally:
            llm.close()
    assert all(r.ok for r in results) and alive.requests == PING + 12
    (left,) = [r.getMessage() for r in caplog.records if "left the rotation" in r.getMessage()]
    assert left.startswith(f"{stopping.base_url} left the rotation for 30s (connection:")


def test_a_server_down_at_the_start_is_named_and_the_run_goes_on(caplog):
    port = free_port()
    down = f"http://127.0.0.1:{port}/v1"
    with FaultyServer() as alive, caplog.at_level(logging.WARNING, logger="germinate.llm"):
        config = endpoints(down, alive.base_url)
        checked = check_llm(config)
        assert checked.endpoints == config.endpoints and checked.model == "faulty-model"
        assert any(f"not answering yet: llm.base_url: cannot reach {down}/models" in r.getMessage()
                   for r in caplog.records)
        assert all(r.ok for r in generate(config, 8)) and alive.requests == 2 * PING + 8  # checked twice
    with pytest.raises(UserError, match="llm.endpoints: no server answers"):
        check_llm(endpoints(down, f"http://127.0.0.1:{free_port()}/v1"))
    with pytest.raises(ValueError, match="not both"):
        LLMConfig(backend="openai", base_url=down, endpoints=[{"base_url": down}])



def test_a_lease_that_shrinks_takes_no_slot_from_a_request_and_one_that_grows_wakes_the_waiting():
    """A server's limit in a Ray worker is its lease, resized from another thread: shrinking lets the
    requests that hold a slot finish and admits none until the limit has room; growing admits those
    waiting at once; a request woken and then cancelled passes its slot on."""

    async def scenario() -> None:
        limit = Limit(2)
        gates = {name: asyncio.Event() for name in ("a", "b", "c", "d", "e")}
        admitted = []

        async def request(name: str) -> None:
            async with limit:
                admitted.append(name)
                await gates[name].wait()

        async def settle() -> None:
            for _ in range(5):
                await asyncio.sleep(0)

        tasks = {name: asyncio.create_task(request(name)) for name in gates}
        await settle()
        assert admitted == ["a", "b"] and limit.waiting == 3
        await asyncio.to_thread(limit.resize, 1)  # from another thread, as the lease's does
        await settle()
        assert (limit.size, limit.in_use, limit.held) == (1, 2, 2)
        gates["a"].set()
        await settle()
        assert admitted == ["a", "b"]  # one left, and the limit is 1
        gates["b"].set()
        await settle()
        assert admitted == ["a", "b", "c"]
        limit.resize(2)  # room for one more: "d" is woken...
        await asyncio.sleep(0)
        tasks["d"].cancel()  # ...and cancelled before it ran: its slot goes to "e"
        await settle()
        assert admitted == ["a", "b", "c", "e"] and limit.in_use == 2 and limit.waiting == 0
        for gate in gates.values():
            gate.set()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        assert limit.in_use == 0

    asyncio.run(scenario())
