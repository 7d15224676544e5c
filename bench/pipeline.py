"""Does germinate keep an inference server busy? Three clients against one loopback
OpenAI-compatible server, in its own process, that answers every request after a fixed
delay with a fixed number of parallel slots (200 ms and 256 slots by default: like a
batching GPU server, 1,280 requests/s at most). Its answers fill any JSON schema with
valid, varied English (distinct per request, the same for the same request), and it
records when each request arrived and left.

  (a) a raw aiohttp client loop: the requests of (b), at the same concurrency;
  (b) `germinate run`, Evol-Instruct, 1,750 distinct seeds (no answers) x 2 generations, gate off;
  (c) `germinate run`, AIDE, hops 3, the full quality gate, 20,000 LLM calls;
  (d) (b) with its shard tasks on a local Ray (`--task-runner ray`): what the run-wide request
      slots cost against threads, Ray's start included;
  (e) (d) on a Ray cluster already running on this machine (`ray start --head`, joined with
      `ray_address: auto`), as a user who scales out has one: the coordination alone.

For each: requests, wall time of the command (start to exit), seconds from its start to its first
request and to its last answer, the tail after that last answer (what the user waits for beyond the
server), requests/s between its first and last request, and the share of that time during which the
server had a request in flight. Targets: (b) >= 0.4 x (a)'s rate, and over the whole wall (command
start to exit) >= 0.5 x (a)'s; (c) busy >= 0.9 and its first request <= 5 s after the command
started; (b), (c): the tail <= 10% of the wall; (d) >= 0.8 x (b)'s rate (also shown: the two
rates per second of server busy time, which leaves out Ray's start).

    python bench/pipeline.py [--rounds 3] [--runs a,b,c,d,e] [--delay-ms 200] [--slots 256]

With several rounds the clients alternate and the medians are printed (a shared machine is
noisy: a slow spell then hits every client alike).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent

# Plain words: nothing the heuristic filters drop (no refusals, images, links, template words).
WORDS = """time year people way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government number night
point home water room mother area money story fact month lot right study book eye job word business issue
side kind head house service friend father power hour game line end member law car city community name
president team minute idea kid body information back parent face others level office door health person
art war history party result change morning reason research girl guy moment air teacher force education
garden river market bridge energy signal budget recipe engine theory method sample pattern habit island
measure explain compare describe build plan write list count solve estimate design test improve choose
quick careful simple modern local early strong clear public general special recent useful common basic""".split()
STRINGS = 4096  # distinct answer texts, made once; a request picks one by its hash


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def fill(schema: dict, rng: random.Random, defs: dict) -> object:
    """A valid instance of a (pydantic-made) JSON schema, varied by `rng`."""
    if "$ref" in schema:
        return fill(defs[schema["$ref"].split("/")[-1]], rng, defs)
    if "enum" in schema:  # a judge's score: mostly passing, sometimes not
        values = schema["enum"]
        return values[-1 - min(len(values) - 1, int(rng.expovariate(0.6)))]
    if "const" in schema:
        return schema["const"]
    if "anyOf" in schema:
        return fill(schema["anyOf"][0], rng, defs)
    kind = schema.get("type")
    if kind == "object":
        return {key: fill(sub, rng, defs) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        low, high = schema.get("minItems", 1), schema.get("maxItems", 3)
        return [fill(schema.get("items", {"type": "string"}), rng, defs) for _ in range(rng.randint(low, high))]
    if kind == "integer":
        return rng.randint(schema.get("minimum", 1), schema.get("maximum", 10))
    if kind == "boolean":
        return rng.random() < 0.5
    text = sentence(rng, rng.randint(3, 9))
    limit = schema.get("maxLength")
    return text if limit is None else text[:limit].rsplit(" ", 1)[0] if len(text) > limit else text


def serve(port: int, delay_s: float, slots: int) -> None:
    """A keep-alive HTTP/1.1 server: /v1/models, /v1/chat/completions, /stats and /reset."""
    import orjson

    events: list[tuple[float, float]] = []  # (arrived, answered), wall clock

    def answer(body: dict) -> bytes:
        digest = hashlib.sha1(orjson.dumps([body["messages"], body.get("seed")])).digest()
        rng = random.Random(digest)
        fmt = body.get("response_format") or {}
        schema = fmt.get("schema") or (fmt.get("json_schema") or {}).get("schema")
        if schema:
            content = orjson.dumps(fill(schema, rng, schema.get("$defs", {}))).decode()
        else:
            content = " ".join(sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(2, 4)))
        return orjson.dumps({
            "id": "cmpl-" + digest.hex()[:12], "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": len(content) // 4, "total_tokens": 40},
        })

    def stats() -> bytes:
        if not events:
            return orjson.dumps({"requests": 0})
        first, last = min(a for a, _ in events), max(b for _, b in events)
        busy, reach, idle = 0.0, first, []
        for arrived, answered in sorted(events):  # the union of the requests' time at the server
            if arrived > reach:
                idle.append((reach - first, arrived - reach))
            if answered > reach:
                busy += answered - max(arrived, reach)
                reach = answered
        idle = sorted(idle, key=lambda gap: -gap[1])[:10]
        steps = [first + 0.5 * i for i in range(int((last - first) / 0.5) + 1)]
        in_flight = [sum(a <= t < b for a, b in events) for t in steps]  # every half second
        return orjson.dumps({"requests": len(events), "first": first, "last": last, "busy_s": busy, "idle": idle,
                             "in_flight": in_flight})

    async def main() -> None:
        limit = asyncio.Semaphore(slots)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    request_line, *headers = head.split(b"\r\n")
                    method, path, _ = request_line.split(b" ", 2)
                    length = next((int(h.split(b":", 1)[1]) for h in headers if h.lower().startswith(b"content-length:")), 0)
                    raw = await reader.readexactly(length)
                    if path.endswith(b"/chat/completions"):
                        arrived = time.time()
                        async with limit:
                            await asyncio.sleep(delay_s)
                            payload = answer(orjson.loads(raw))
                        events.append((arrived, time.time()))
                    elif path.endswith(b"/models"):
                        payload = b'{"object": "list", "data": [{"id": "bench-model", "object": "model", "owned_by": "bench"}]}'
                    elif path == b"/stats":
                        payload = stats()
                    else:  # /reset
                        events.clear()
                        payload = b"{}"
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(payload), payload))
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def call(url: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST" if url.endswith("reset") else "GET")) as r:
        return json.loads(r.read())


def evol_seeds(count: int) -> list[dict]:
    """Instructions without answers, as a user's seed file usually is."""
    rng = random.Random(0)
    return [{"id": f"bench-{i}", "instruction": f"{sentence(rng, rng.randint(6, 12))[:-1]} ({i})?"}
            for i in range(count)]


async def raw_loop(base_url: str, bodies: list[dict], concurrency: int) -> None:
    """The ceiling: one aiohttp session, a semaphore, JSON in and out, nothing else."""
    import aiohttp

    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url + "/", connector=connector) as session:

        async def one(body: dict) -> str:
            async with limit, session.post("chat/completions", json=body) as response:
                return (await response.json())["choices"][0]["message"]["content"]

        await asyncio.gather(*(one(body) for body in bodies))


def run_raw(base_url: str, seeds: list[dict], generations: int, concurrency: int) -> tuple[float, float]:
    bodies = [
        {"model": "bench-model", "messages": [{"role": "user", "content": f"Rewrite ({g}): {s['instruction']}"}],
         "max_tokens": 256, "temperature": 0.7, "top_p": 0.95, "seed": g}
        for s in seeds for g in range(2 * generations)  # each generation: an evolution and its answer
    ]
    start = time.time()
    asyncio.run(raw_loop(base_url, bodies, concurrency))
    return start, time.time()


def run_germinate(base_url: str, folder: Path, name: str, settings: dict) -> tuple[float, float]:
    """When the command started and when it exited."""
    config = folder / f"{name}.yaml"
    config.write_text(json.dumps(settings))  # JSON is YAML
    start = time.time()
    subprocess.run([sys.executable, "-m", "germinate.cli", "run", "--config", str(config), "--run-id", name],
                   cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, check=True, stdout=subprocess.DEVNULL)
    return start, time.time()


def on_ray_cluster(run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """`run` beside a Ray cluster of this machine, started before it (not timed) as a user starts one,
    with Ray's workers at the run's niceness (as germinate's own local Ray has them), and stopped
    after it: the other cases do not share the cores with it."""
    ray = str(Path(sys.executable).parent / "ray")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run([ray, "start", "--head", "--include-dashboard=false", "--disable-usage-stats",
                    '--system-config={"worker_niceness": 0}'], check=True, **quiet)
    try:
        return run()
    finally:
        subprocess.run([ray, "stop", "--force"], **quiet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay-ms", type=float, default=200)
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=1750, help="(a), (b): distinct seeds")
    parser.add_argument("--generations", type=int, default=2, help="(a), (b): Evol-Instruct generations")
    parser.add_argument("--aide-seeds", type=int, default=175)
    parser.add_argument("--aide-calls", type=int, default=20_000)
    parser.add_argument("--runs", default="a,b,c,d,e", help="which of a, b, c, d, e to run, in this order each round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--gaps", action="store_true", help="print each run's longest idle gaps (start s, length s)")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = multiprocessing.Process(target=serve, args=(port, args.delay_ms / 1000, args.slots), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{port}"
    time.sleep(1.0)

    folder = Path(tempfile.mkdtemp(prefix="germinate-bench-"))
    seeds = evol_seeds(args.seeds)
    (folder / "evol.jsonl").write_text("".join(json.dumps(s) + "\n" for s in seeds))
    (folder / "aide.jsonl").write_text("".join(json.dumps(s) + "\n" for s in seeds[: args.aide_seeds]))
    llm = {"backend": "openai", "base_url": base + "/v1", "concurrency": args.concurrency}
    evol = {
        "seeds": str(folder / "evol.jsonl"), "strategy": "evol-instruct", "llm": llm, "output_dir": str(folder),
        "evol_instruct": {"generations": args.generations},
        "budget": {"max_llm_calls": args.seeds * 2 * args.generations,  # the seeds are not rows: none is answered
                   "max_records": args.seeds * args.generations},  # generated rows (the seeds are not rows)
        "quality": {stage: {"enabled": False} for stage in
                    ("heuristics", "exact_dedup", "near_dedup", "semantic_dedup", "judge", "select")},
    }
    aide = {
        "seeds": str(folder / "aide.jsonl"), "strategy": "aide", "llm": llm, "output_dir": str(folder),
        "aide": {"hops": 3}, "budget": {"max_llm_calls": args.aide_calls, "max_records": args.aide_calls // 12},
    }
    clients = {
        "a": ("(a) raw aiohttp loop", lambda r: run_raw(base + "/v1", seeds, args.generations, args.concurrency)),
        "b": ("(b) germinate evol-instruct", lambda r: run_germinate(base + "/v1", folder, f"evol-{r}", evol)),
        "c": ("(c) germinate aide, full gate", lambda r: run_germinate(base + "/v1", folder, f"aide-{r}", aide)),
        "d": ("(d) germinate evol-instruct, Ray", lambda r: run_germinate(
            base + "/v1", folder, f"evol-ray-{r}", {**evol, "orchestration": {"task_runner": "ray"}})),
        "e": ("(e) (d) on a running Ray", lambda r: on_ray_cluster(lambda: run_germinate(
            base + "/v1", folder, f"evol-cluster-{r}",
            {**evol, "orchestration": {"task_runner": "ray", "ray_address": "auto"}}))),
    }
    chosen = args.runs.split(",")
    results: dict[str, list[dict]] = {key: [] for key in chosen}
    for round_ in range(args.rounds):
        for key in chosen:
            call(base + "/reset")
            started, ended = clients[key][1](round_)
            stats = call(base + "/stats")
            span = stats["last"] - stats["first"]
            if args.gaps:
                print(key, "idle gaps (start s + length s):",
                      ", ".join(f"{start:.1f}+{length:.2f}" for start, length in stats["idle"]))
                print(key, "in flight every 0.5 s:", " ".join(map(str, stats["in_flight"])))
            results[key].append({
                "requests": stats["requests"], "wall": ended - started, "first": stats["first"] - started,
                "last": stats["last"] - started, "tail": ended - stats["last"],
                "rate": stats["requests"] / span, "busy": stats["busy_s"] / span,
            })
    server.terminate()

    median = {key: {field: statistics.median(r[field] for r in rows) for field in rows[0]}
              for key, rows in results.items()}
    print(f"server: {args.delay_ms:g} ms per request, {args.slots} slots; client concurrency {args.concurrency}; "
          f"{args.rounds} round(s), medians")
    print(f"{'client':<32} {'requests':>8} {'wall s':>7} {'first s':>7} {'last s':>7} {'tail s':>7} {'tail %':>6} "
          f"{'req/s':>7} {'busy':>5}")
    for key, m in median.items():
        share = statistics.median(r["tail"] / r["wall"] for r in results[key])
        print(f"{clients[key][0]:<32} {m['requests']:>8.0f} {m['wall']:>7.1f} {m['first']:>7.2f} {m['last']:>7.1f} "
              f"{m['tail']:>7.1f} {100 * share:>6.1f} {m['rate']:>7.0f} {m['busy']:>5.2f}")
    if "a" in results and "b" in results:
        ratio = statistics.median(b["rate"] / a["rate"] for a, b in zip(results["a"], results["b"]))
        whole = statistics.median((b["requests"] / b["wall"]) / (a["requests"] / a["wall"])
                                  for a, b in zip(results["a"], results["b"]))
        print(f"(b)/(a) rate: {ratio:.2f} (target >= 0.4); over the whole wall: {whole:.2f} (target >= 0.5)")
    for key in ("b", "c"):
        if key in results:
            share = statistics.median(r["tail"] / r["wall"] for r in results[key])
            print(f"({key}) tail {100 * share:.1f}% of the wall (target <= 10%)")
    if "b" in results and "d" in results:
        ratio = statistics.median(d["rate"] / b["rate"] for b, d in zip(results["b"], results["d"]))
        # Requests per second of the server's busy time: how fast each feeds the server once it does,
        # without the wait between the run's server check and its first shard (Ray's start).
        busy = statistics.median((d["rate"] / d["busy"]) / (b["rate"] / b["busy"])
                                 for b, d in zip(results["b"], results["d"]))
        print(f"(d)/(b) rate: {ratio:.2f}  (target >= 0.8); while requests were in flight: {busy:.2f}")
    if "b" in results and "e" in results:
        ratio = statistics.median(e["rate"] / b["rate"] for b, e in zip(results["b"], results["e"]))
        whole = statistics.median(b["wall"] / e["wall"] for b, e in zip(results["b"], results["e"]))
        print(f"(e)/(b) rate: {ratio:.2f}  (target >= 0.8); over the whole wall: {whole:.2f}")
    if "c" in median:
        print(f"(c) busy {median['c']['busy']:.2f} (target >= 0.9), first request {median['c']['first']:.2f}s "
              f"(target <= 5)")


if __name__ == "__main__":
    main()
