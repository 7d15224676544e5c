"""Real HTTP servers on loopback for the tests.

`FaultyServer` speaks the OpenAI chat-completions protocol and misbehaves on
purpose: 429s, 500s, answers that arrive after the client's timeout, broken
JSON, outages, refusals. Its successful answers are built from the request's
JSON schema, so every structured call of the pipeline gets a valid instance, and
they depend on the messages and the sampling seed, as a real sampler's do.

`RecordingHub` stands in for the Hugging Face Hub, which no machine here
reaches: it answers the calls huggingface_hub makes to publish a dataset and
records them, with the files committed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

FAULTS = ("rate_limit", "server_error", "slow", "broken_json")


def instance(schema: dict[str, Any], defs: dict[str, Any] | None = None, pick: int = -1, tag: str = "") -> Any:
    """A small valid instance of a (pydantic-made) JSON schema; `pick` chooses among enum values,
    `tag` starts every string (what makes answers differ)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return instance(defs[schema["$ref"].split("/")[-1]], defs, pick, tag)
    if "enum" in schema:
        return schema["enum"][pick]
    kind = schema.get("type")
    if kind == "object":
        return {key: instance(sub, defs, pick, tag) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        return [instance(items, defs, pick, tag + str(i)) for i in range(min(2, schema.get("maxItems", 2)))]
    if kind == "integer":
        return 7
    return f"{tag} a concise answer about the task".strip()[: schema.get("maxLength")]


def vector(text: str, dim: int = 8) -> list[float]:
    """A deterministic, not normalised embedding of `text`."""
    digest = hashlib.sha256(text.encode()).digest()
    return [digest[i] - 127.5 for i in range(dim)]


class JSONHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, quiet, answers in JSON."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) for the life of a `with` block. It can be
    stopped (nothing listens; requests already on a connection are dropped unanswered) and
    started again on the same port."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.port = 0
        self.down = True
        self._bind()

    def _bind(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.httpd is None:
            self._bind()
        self.down = False
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if not self.down:
            self.down = True
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError


class FaultyServer(LoopbackServer):
    """`fail_share` of distinct requests fail once (with each of `kinds` in turn) and then succeed;
    `dead_share` fail every time, and so do those whose messages contain `dead_when`.
    Decided by a hash of the messages, so it is repeatable.
    `timeout_s` is the client's timeout, which a "slow" answer overruns.
    `outage_after`: the server goes down when that many chat requests have arrived, for
    `outage_s` seconds (None: for good). `chat_status`: every chat request gets this HTTP
    status (401, 501...) while the models list still answers.
    `seeds` records the sampling seed of every try, by the request's messages. `answering`, cleared,
    holds chat requests unanswered until it is set again (a server that hangs); `on_chat(number,
    client address)` is called as each chat request arrives."""

    def __init__(
        self,
        fail_share: float = 0.0,
        dead_share: float = 0.0,
        delay_s: float = 0.0,
        timeout_s: float = 10.0,
        kinds: tuple[str, ...] = FAULTS,
        dead_when: str | None = None,
        low_when: str | None = None,
        outage_after: int | None = None,
        outage_s: float | None = None,
        chat_status: int | None = None,
    ):
        self.kinds = kinds
        self.dead_when = dead_when
        self.low_when = low_when  # enums take their last value (a judge's 10), the first (1) for these messages
        self.fail_share = fail_share
        self.dead_share = dead_share
        self.delay_s = delay_s
        self.timeout_s = timeout_s
        self.outage_after = outage_after
        self.outage_s = outage_s
        self.chat_status = chat_status
        self.seeds: dict[str, list[int]] = {}
        self.embedded: list[list[str]] = []  # the inputs of each /embeddings request
        self.embeddings_short = False  # answer /embeddings with one vector too few
        self.attempts: dict[str, int] = {}
        self.failed_once = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0
        self.faults: dict[str, int] = dict.fromkeys(FAULTS, 0)
        self.answering = threading.Event()  # cleared: chat requests are taken and held unanswered until set
        self.answering.set()
        self.on_chat: Callable[[int, tuple[str, int]], None] | None = None  # (request number, client address)
        super().__init__()

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def outage(self, seconds: float | None) -> None:
        """Go down now; come back after `seconds` (None: stay down)."""
        self.stop()
        if seconds is not None:
            threading.Timer(seconds, self.start).start()

    def _plan(self, body: dict[str, Any]) -> str | None:
        key = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()
        bucket = int(key[:8], 16) / 0xFFFFFFFF
        with self.lock:
            self.seeds.setdefault(key, []).append(body.get("seed"))
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
            if bucket < self.dead_share or (self.dead_when and self.dead_when in json.dumps(body["messages"])):
                return "server_error"
            if bucket < self.dead_share + self.fail_share and attempt == 0:
                self.failed_once += 1
                return self.kinds[self.failed_once % len(self.kinds)]  # each kind in turn
        return None

    def _answer(self, body: dict[str, Any], fault: str | None) -> tuple[int, bytes]:
        if fault == "rate_limit":
            return 429, b'{"error": {"message": "slow down"}}'
        if fault == "server_error":
            return 500, b'{"error": {"message": "boom"}}'
        if fault == "slow":
            time.sleep(self.timeout_s + 0.5)
        fmt = body.get("response_format") or {}
        schema = fmt.get("schema") or fmt.get("json_schema", {}).get("schema")
        content = self._content(body, schema)
        if fault == "broken_json":
            content = content[: len(content) // 2]
        return 200, json.dumps(
            {
                "id": "cmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": self._usage(body, content),
            }
        ).encode()

    def _usage(self, body: dict[str, Any], content: str) -> dict[str, int]:
        return {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}

    def _content(self, body: dict[str, Any], schema: dict[str, Any] | None) -> str:
        pick = 0 if self.low_when and self.low_when in json.dumps(body["messages"]) else -1
        tag = hashlib.sha256(json.dumps([body["messages"], body.get("seed")]).encode()).hexdigest()[:6]
        return json.dumps(instance(schema, pick=pick, tag=tag)) if schema else f"Here is a careful answer ({tag})."

    def _handler(self):
        server = self

        class Handler(JSONHandler):
            def do_GET(self) -> None:
                self._send(200, b'{"object": "list", "data": [{"id": "faulty-model", "object": "model", "owned_by": "test"}]}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.endswith("/embeddings"):
                    server.embedded.append(body["input"])
                    self._send(200, json.dumps({"object": "list", "data": [
                        {"object": "embedding", "index": i, "embedding": vector(text)}
                        for i, text in enumerate(body["input"][: -1 if server.embeddings_short else None])]}).encode())
                    return
                with server.lock:
                    server.requests += 1
                    number = server.requests
                    going_down = server.requests == server.outage_after
                if server.on_chat:
                    server.on_chat(number, self.client_address)
                if going_down:
                    server.outage(server.outage_s)
                if server.down:
                    self.close_connection = True  # dropped unanswered, as by a server that died
                    return
                if server.chat_status:
                    self._send(server.chat_status, b'{"error": {"message": "not for you"}}')
                    return
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    fault = server._plan(body)
                    if fault:
                        with server.lock:
                            server.faults[fault] += 1
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    server.answering.wait()
                    status, payload = server._answer(body, fault)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                self._send(status, payload)

        return Handler


class RecordingHub(LoopbackServer):
    """The Hub API calls that `HfApi.create_repo`, `repo_info`, `create_branch`, `list_repo_files`
    and `create_commit` make for a dataset repo (`repos` may be seeded with existing repos). Every file is accepted as a regular (inline, base64)
    upload: the Hub's LFS/Xet storage for large files is not emulated.

    `calls` holds (method, path, Authorization header); `repos` each repo's files after the last
    commit, by path; `private` each created repo's visibility."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        super().__init__()

    def _reply(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path == "/api/repos/create":
            data = json.loads(body)
            repo = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            if repo in self.repos:
                return 409, {"error": "You already created this dataset repo", "url": f"{self.url}/datasets/{repo}"}
            self.repos[repo] = {}
            self.private[repo] = data.get("visibility") == "private" or bool(data.get("private"))
            return 200, {"url": f"{self.url}/datasets/{repo}", "name": repo}
        info = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)", path)
        if info and method == "GET":
            repo = info.group(1)
            if repo not in self.repos:
                return 404, {"error": "Repository not found"}
            return 200, {"id": repo, "private": self.private[repo], "sha": "0" * 40, "siblings": []}
        if path == "/api/validate-yaml":
            return 200, {}
        match = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/(branch|tree|preupload|commit)/([^/?]+)(?:/.*)?", path)
        if not match:
            return 404, {"error": f"not emulated: {method} {path}"}
        repo, action, _revision = match.groups()
        files = self.repos.setdefault(repo, {})
        if action == "branch":
            return 200, {}
        if action == "tree":
            return 200, [{"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                         for p, d in sorted(files.items())]
        if action == "preupload":
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in json.loads(body)["files"]]}
        for line in body.splitlines():  # the commit: NDJSON, a header then one line per operation
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                files.pop(item["value"]["path"])
        return 200, {"commitUrl": f"{self.url}/datasets/{repo}/commit/{'0' * 40}", "commitOid": "0" * 40}

    def _handler(self):
        server = self

        class Handler(JSONHandler):
            def _serve(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                with server.lock:
                    server.calls.append((method, path, self.headers.get("Authorization")))
                    status, payload = server._reply(method, path, body)
                self._send(status, json.dumps(payload).encode())

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler


WORDS = """time year people way day thing life child world school state family student group country problem
hand part place case week company system program question work number night point home water room area money
story fact month book job word business issue side kind house service friend power hour game line member law
city community name team minute idea body information level office door health person art history party
result change morning reason research moment air teacher education garden river market bridge energy signal
budget recipe engine theory method sample pattern habit island measure explain compare describe build plan
write list count solve estimate design test improve choose quick careful simple modern local early strong
clear public general special recent useful common basic""".split()


class WritingServer(FaultyServer):
    """A FaultyServer whose answers read like a small model's: sentences of varied plain words, a
    different text for every request (by a hash of its messages and seed), checks that pass ("yes")
    and judges' top scores. What strategies that compare their records (novelty, constraints) need."""

    def _content(self, body: dict[str, Any], schema: dict[str, Any] | None) -> str:
        rng = random.Random(json.dumps([body["messages"], body.get("seed")]))
        if schema:
            return json.dumps(prose(schema, rng, schema.get("$defs", {})))
        return " ".join(sentence(rng) for _ in range(rng.randint(2, 4)))


def sentence(rng: random.Random) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
    return text[0].upper() + text[1:] + "."


def prose(schema: dict[str, Any], rng: random.Random, defs: dict[str, Any]) -> Any:
    """A valid instance of a (pydantic-made) JSON schema in varied words."""
    if "$ref" in schema:
        return prose(defs[schema["$ref"].split("/")[-1]], rng, defs)
    if "enum" in schema:
        return "yes" if "yes" in schema["enum"] else schema["enum"][-1]
    kind = schema.get("type")
    if kind == "object":
        return {key: prose(sub, rng, defs) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        low = schema.get("minItems", 1)
        return [prose(schema.get("items", {"type": "string"}), rng, defs)
                for _ in range(rng.randint(low, max(low, min(3, schema.get("maxItems", 3)))))]
    if kind == "integer":
        return schema.get("maximum", 7)
    return sentence(rng)[: schema.get("maxLength")]
