"""Throughput of germinate's LLM layer against two bare client loops: a raw aiohttp loop (the
ceiling for a Python client here) and the openai SDK with its default transport.

A loopback OpenAI-compatible server (its own process) answers every request after a
fixed delay. The clients send the same N distinct requests at the same concurrency;
the script prints the median requests/s of each and the medians of the per-round ratios
(target: layer >= 0.9 x raw aiohttp). The layer runs as a pipeline uses it: its own loop
thread, retries, the outage watch, the response cache on.

    python bench/llm_throughput.py [--requests 2000] [--rounds 5] [--delay-ms 50] [--concurrency 64 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from germinate.llm import LLM, Request  # noqa: E402
from germinate.llm.cache import ResponseCache  # noqa: E402
from germinate.llm.openai_compat import OpenAIBackend  # noqa: E402

BODY = json.dumps(
    {
        "id": "cmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


def serve(port: int, delay_s: float) -> None:
    """A minimal keep-alive HTTP/1.1 server: fast enough that the clients are what is measured."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                await asyncio.sleep(delay_s)
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"request {i}"}]


async def raw(base_url: str, n: int, concurrency: int) -> float:
    """One aiohttp session, a semaphore, JSON in and out, nothing else."""
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            body = {"model": "bench", "messages": messages(i), "max_tokens": 8, "temperature": 0.7, "top_p": 0.95,
                    "seed": 0}
            async with semaphore, session.post(base_url + "/chat/completions", json=body) as response:
                (await response.json())["choices"][0]["message"]["content"]

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - start)


async def sdk(base_url: str, n: int, concurrency: int) -> float:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=60)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await client.chat.completions.create(model="bench", messages=messages(i), max_tokens=8, temperature=0.7,
                                                 top_p=0.95, seed=0)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - start
    await client.close()
    return n / elapsed


def layer(base_url: str, n: int, concurrency: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        backend = OpenAIBackend(base_url, "bench", None, "json_schema", timeout_s=60)
        llm = LLM(backend, ResponseCache(Path(folder) / "cache.sqlite"), concurrency=concurrency)
        requests = [Request(messages(i), max_tokens=8) for i in range(n)]
        try:
            start = time.perf_counter()
            results = llm.run(llm.generate(requests))
            elapsed = time.perf_counter() - start
        finally:
            llm.close()
    assert all(r.ok for r in results), next(r.error for r in results if not r.ok)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--delay-ms", type=float, default=50)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the three clients")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = multiprocessing.Process(target=serve, args=(port, args.delay_ms / 1000), daemon=True)
    server.start()
    base_url = f"http://127.0.0.1:{port}/v1"
    time.sleep(0.5)
    asyncio.run(raw(base_url, 50, 8))  # warm up both sides

    print(f"{args.requests} requests per round, {args.rounds} rounds, server delay {args.delay_ms:g} ms")
    print(f"{'concurrency':>11}  {'raw aiohttp':>11}  {'openai SDK':>10}  {'germinate':>9}  "
          f"{'germinate/raw':>13}  {'germinate/SDK':>13}")
    for concurrency in args.concurrency:
        # The clients alternate, round after round, and each round's ratios are taken between
        # neighbours: a slow spell of a shared machine then hits them alike.
        rates: dict[str, list[float]] = {"raw": [], "sdk": [], "layer": []}
        for _ in range(args.rounds):
            rates["raw"].append(asyncio.run(raw(base_url, args.requests, concurrency)))
            rates["sdk"].append(asyncio.run(sdk(base_url, args.requests, concurrency)))
            rates["layer"].append(layer(base_url, args.requests, concurrency))
        to_raw = statistics.median(g / r for r, g in zip(rates["raw"], rates["layer"]))
        to_sdk = statistics.median(g / s for s, g in zip(rates["sdk"], rates["layer"]))
        medians = {name: statistics.median(values) for name, values in rates.items()}
        print(f"{concurrency:>11}  {medians['raw']:>11.0f}  {medians['sdk']:>10.0f}  {medians['layer']:>9.0f}  "
              f"{to_raw:>13.2f}  {to_sdk:>13.2f}")
    server.terminate()


if __name__ == "__main__":
    main()
