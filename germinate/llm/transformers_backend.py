"""A GGUF model in-process through transformers on torch, the requests in flight decoded together
(`llm.backend: transformers`; nothing to compile at install).

One sequence at a time leaves a CPU's matrix units idle (a 135M model decodes one token in a few
milliseconds of arithmetic and tens of milliseconds of Python); decoding every request in flight
in one forward pass uses them. Every forward takes a list of pieces, each the new tokens of one
request, packed into one sequence: a prompt being read (after its system message, whose keys are
read once and copied), or the last token sampled (with the tokens a JSON grammar forces after it, so
that a schema's keys cost no step of their own).

A request's answer does not depend on the requests it was decoded with, so a run samples the same
text however its requests happen to meet:
- every matrix product sums each row as a block of exactly `BLOCK` rows does (CPU kernels choose
  how to sum by the shape: a fixed shape sums every row the same way, wherever it sits in it);
- a sampled token's rows go through torch's 4-bit kernel where the weights are 4-bit already (the
  shipped GGUF is Q4_1): a step then reads an eighth of the bytes, and decoding is bound by reading
  the weights. That kernel sums each row alone. A prompt's rows keep the float product, which is
  faster for many rows at once;
- attention runs request by request, over that request's own keys (kept in its own buffer);
- each request samples from its own generator, seeded by the request.
tests/test_transformers_backend.py checks a request decoded alone against the same request among
others.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import json
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llguidance
import llguidance.hf
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from germinate.llm.base import Backend, Completion, Request
from germinate.llm.errors import PermanentError
from germinate.settings import machine_cache, made_once

log = logging.getLogger(__name__)

TOP_K, MIN_P = 40, 0.05
BLOCK = 16  # rows per matrix product: the kernels are fast from 16 rows, and one sequence wastes little
GROUP = 32  # weights per scale in a Q4_0/Q4_1 GGUF, and in torch's 4-bit kernel

# Backends not closed yet. A decoding thread still in torch when the interpreter tears torch down
# crashes the process (a run that failed, a caller that forgot `close`): each is stopped first.
_open: set[TransformersBackend] = set()


@atexit.register
def _stop_open_backends() -> None:
    for backend in list(_open):
        backend._stop()


def _fast_dtype():
    """bfloat16 where the CPU multiplies it natively (AMX, AVX512-BF16), float32 elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return torch.bfloat16 if ("amx_bf16" in flags or "avx512_bf16" in flags) else torch.float32


@dataclass
class _Job:
    request: Request
    schema: dict[str, Any] | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class _Sequence:
    """One request being decoded: its keys and values, its sampler and its grammar."""

    job: _Job | None  # None: a shared part of prompts, read alone
    prompt: list[int]
    keys: Any  # (layers, kv_heads, capacity, head_dim)
    values: Any
    generator: Any
    matcher: Any | None
    pending: list[int]  # tokens the next forward reads
    length: int = 0  # tokens in the buffers
    made: list[int] = field(default_factory=list)


class TransformersBackend(Backend):
    def __init__(self, model_path: Path, n_ctx: int = 2048, rows: int = 16):
        self.model = model_path.name
        self.location = str(model_path)
        self._n_ctx = n_ctx
        self._rows = rows  # requests decoded together
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._failure: BaseException | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(model_path,), name="germinate-transformers", daemon=True)
        self._thread.start()
        _open.add(self)

    async def complete(self, request: Request, schema: dict[str, Any] | None) -> Completion:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(_Job(request, schema, future, loop))
        return await future

    async def close(self) -> None:
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        """End the decoding thread after its current step; what is in flight fails as closed."""
        self._closing.set()
        self._jobs.put(None)  # wakes a thread that waits for work
        self._thread.join()
        _open.discard(self)

    # --- the decoding thread ---

    def _serve(self, model_path: Path) -> None:
        try:
            self._load(model_path)
        except BaseException as exc:  # every request gets the reason
            self._failure = exc
        live: list[_Sequence] = []
        while not self._closing.is_set():
            if self._admit(live, wait=not live):
                break
            if not live:  # what came could not start
                continue
            try:
                self._step(live)
            except Exception as exc:  # a failed forward fails the requests in it, not the backend
                log.exception("the model failed")
                for sequence in live:
                    self._answer(sequence.job, error=PermanentError(f"model_error: {exc!r}"))
                live.clear()
        waiting = [self._jobs.get_nowait() for _ in range(self._jobs.qsize())]
        for job in [s.job for s in live] + [job for job in waiting if job is not None]:
            self._answer(job, error=PermanentError("closed: the run ended before this request"))

    def _admit(self, live: list[_Sequence], wait: bool) -> bool:
        """Start the requests that wait, up to `rows` in all; True when the backend closes."""
        while len(live) < self._rows:
            try:
                job = self._jobs.get(timeout=None) if wait else self._jobs.get_nowait()
            except queue.Empty:
                return False
            wait = False
            if job is None:
                return True
            if self._failure is not None:
                self._answer(job, error=self._failure)
                continue
            try:
                live.append(self._start(job))
            except PermanentError as exc:
                self._answer(job, error=exc)
        return False

    def _load(self, model_path: Path) -> None:
        torch.set_num_threads(os.cpu_count() or 1)
        AttentionInterface.register("germinate_per_sequence", _attention)
        transformers_logging.disable_progress_bar()  # the run shows its own progress
        transformers_logging.set_verbosity_error()
        dtype = _fast_dtype()
        folder = _converted(model_path, dtype)
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="germinate_per_sequence")
        self._net = _in_fixed_blocks(model.eval())
        self._system_parts: dict[str, _Sequence] = {}  # system message -> its keys and values, read alone
        config = model.config
        self._shape = (
            config.num_hidden_layers,
            config.num_key_value_heads,
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        )
        self._eos = self._tokenizer.eos_token_id
        self._grammar_tokenizer = llguidance.hf.from_tokenizer(self._tokenizer)

    def _start(self, job: _Job) -> _Sequence:
        request = job.request
        prompt = self._tokenizer.apply_chat_template(
            request.messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        if len(prompt) >= self._n_ctx:
            raise PermanentError(f"context_overflow: the prompt has {len(prompt)} tokens, llm.n_ctx is {self._n_ctx}")
        capacity = min(len(prompt) + request.max_tokens, self._n_ctx)
        sequence = self._sequence(
            prompt,
            capacity,
            job=job,
            generator=torch.Generator().manual_seed(request.seed),
            matcher=self._matcher(job.schema),
        )
        shared = self._system_part(request.messages, prompt)
        if shared is not None:  # its keys are copied, not computed again
            sequence.length = shared.length
            sequence.keys[:, :, : shared.length] = shared.keys
            sequence.values[:, :, : shared.length] = shared.values
            sequence.pending = prompt[shared.length :]
        return sequence

    def _sequence(self, prompt: list[int], capacity: int, **parts: Any) -> _Sequence:
        layers, heads, dim = self._shape
        dtype = self._net.dtype
        return _Sequence(
            prompt=prompt,
            keys=torch.empty(layers, heads, capacity, dim, dtype=dtype),
            values=torch.empty(layers, heads, capacity, dim, dtype=dtype),
            pending=prompt,  # what a grammar forces first follows the first token sampled: it is made, not read
            **parts,
        )

    def _system_part(self, messages: list[dict[str, str]], prompt: list[int]) -> _Sequence | None:
        """The prompt's system message, read alone once per process: the requests of a run share
        it (a fifth of a demo prompt's tokens). Every prompt that starts with it has its keys from
        that one reading, so its answer is the same whichever request read it first."""
        if messages[0]["role"] != "system":
            return None
        text = messages[0]["content"]
        if text not in self._system_parts:
            tokens = self._tokenizer.apply_chat_template(messages[:1], tokenize=True, return_dict=True)["input_ids"]
            alone = self._sequence(tokens, len(tokens), job=None, generator=None, matcher=None)
            self._forward([alone])
            self._system_parts[text] = alone
        shared = self._system_parts[text]
        return shared if prompt[: shared.length] == shared.prompt and len(prompt) > shared.length else None

    def _matcher(self, schema: dict[str, Any] | None):
        if schema is None:
            return None
        matcher = llguidance.LLMatcher(self._grammar_tokenizer, _grammar(json.dumps(schema)))
        if matcher.is_error():
            raise PermanentError(f"bad_schema: {matcher.get_error()}")
        return matcher

    def _step(self, live: list[_Sequence]) -> None:
        """One forward over every live sequence's pending tokens, then one token sampled for each."""
        logits = self._forward(live)
        finished = []
        for sequence, row in zip(live, logits):
            token = self._sample(sequence, row)
            sequence.made.append(token)
            sequence.pending = [token]
            if sequence.matcher is not None and token != self._eos:
                sequence.matcher.consume_token(token)
                sequence.pending += self._forced(sequence)
            reason = self._finish_reason(sequence, token)
            if reason:
                finished.append(sequence)
                self._answer(sequence.job, completion=self._completion(sequence, reason))
        for sequence in finished:
            live.remove(sequence)

    def _forward(self, live: list[_Sequence]):
        """The logits of each sequence's last pending token, its pending tokens' keys and values stored
        in its buffers. Sorts `live`: the prompts being read first, where the layers split their rows."""
        live.sort(key=lambda s: bool(s.made))
        self._net.prompt_rows = sum(len(s.pending) for s in live if not s.made)  # the layers read it
        tokens = [t for s in live for t in s.pending]
        positions = [s.length + i for s in live for i in range(len(s.pending))]
        ends = torch.tensor(list(itertools.accumulate(len(s.pending) for s in live))) - 1
        with torch.inference_mode():
            logits = self._net(
                input_ids=torch.tensor([tokens]),
                position_ids=torch.tensor([positions]),
                use_cache=False,
                logits_to_keep=ends,
                sequences=live,
            ).logits[0].float()
        for sequence in live:
            sequence.length += len(sequence.pending)
        return logits

    def _sample(self, sequence: _Sequence, logits) -> int:
        request = sequence.job.request
        if sequence.matcher is not None:
            bits = np.frombuffer(sequence.matcher.compute_bitmask(), dtype=np.uint8)
            allowed = torch.from_numpy(np.unpackbits(bits, bitorder="little")[: len(logits)].astype(bool))
            logits = logits.masked_fill(~allowed, float("-inf"))
        if request.temperature <= 0:
            return int(logits.argmax())
        # llama.cpp's default chain: the TOP_K likeliest, then top_p, then min_p, then the temperature.
        # Without the first and the third a 135M model rambles on.
        probs = torch.softmax(logits, dim=-1)
        top, index = probs.topk(TOP_K)
        kept = ((top.cumsum(0) - top) < request.top_p) & (top >= MIN_P * top[0])
        weights = top[kept] ** (1 / request.temperature)
        cumulative = weights.cumsum(0)
        draw = torch.rand(1, generator=sequence.generator) * cumulative[-1]
        return int(index[min(int(torch.searchsorted(cumulative, draw)), len(weights) - 1)])

    def _finish_reason(self, sequence: _Sequence, token: int) -> str | None:
        matcher = sequence.matcher
        if token == self._eos or (matcher is not None and matcher.is_stopped()):
            return "stop"
        request = sequence.job.request
        full = sequence.length + len(sequence.pending) >= sequence.keys.shape[2]
        if len(sequence.made) >= request.max_tokens or full:
            return "length"
        return None

    def _forced(self, sequence: _Sequence) -> list[int]:
        """The tokens the grammar allows no choice for (a JSON key, its quotes and colon), taken as made:
        the next forward reads them all at once instead of one step each (a judgement's keys are a
        third of its tokens). They follow from the request's own tokens, so its answer stays its own."""
        matcher = sequence.matcher
        if matcher is None or matcher.is_stopped():
            return []
        room = min(
            sequence.job.request.max_tokens - len(sequence.made),
            sequence.keys.shape[2] - sequence.length - len(sequence.pending) - 1,
        )
        forced = matcher.compute_ff_tokens()[: max(room, 0)]
        matcher.consume_tokens(forced)
        sequence.made += forced
        return forced

    def _completion(self, sequence: _Sequence, reason: str) -> Completion:
        made = [t for t in sequence.made if t != self._eos]
        return Completion(
            text=self._tokenizer.decode(made, skip_special_tokens=True),
            finish_reason=reason,
            prompt_tokens=len(sequence.prompt),
            completion_tokens=len(sequence.made),
        )

    @staticmethod
    def _answer(job: _Job, completion: Completion | None = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():  # the request was cancelled meanwhile
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(completion)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # its event loop is closed: nobody waits
            pass


def _converted(model_path: Path, dtype) -> Path:
    """The GGUF file as transformers' own files, converted once per machine: reading a GGUF (its
    49k-token vocabulary above all) takes 20 s, these files 2 s."""
    stat = model_path.stat()
    name = f"{model_path.stem}-{stat.st_size}-{stat.st_mtime_ns}-{str(dtype).removeprefix('torch.')}"

    def convert(scratch: Path) -> None:
        log.info("converting %s for transformers, once, into %s", model_path, machine_cache("models") / name)
        tokenizer = AutoTokenizer.from_pretrained(model_path.parent, gguf_file=model_path.name)
        model = AutoModelForCausalLM.from_pretrained(model_path.parent, gguf_file=model_path.name, dtype=dtype)
        save_model(model, str(scratch / "model.safetensors"))
        vars(model.config).pop("quantization_config", None)  # the weights are plain tensors now: read them as such
        model.config.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)

    return made_once(machine_cache("models") / name, convert)


@functools.cache
def _grammar(schema_json: str) -> str:
    """The grammar of a schema given as text (to be cached). The text keeps the schema's key order:
    the properties are written in that order, and a judge's critique must come before its scores."""
    # No free whitespace: a small model given the choice fills its max_tokens with blank lines.
    compact = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}
    return llguidance.LLMatcher.grammar_from_json_schema(_closed(json.loads(schema_json)), overrides=compact)


def _closed(schema: Any) -> Any:
    """Objects take only their declared keys, as llama.cpp's grammars did: JSON Schema allows others
    by default, and a small model then invents keys until its max_tokens."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sequences=(), **_):
    """Each sequence's new tokens attend to that sequence's keys alone (and are stored there).

    query: (1, heads, tokens, dim), the pieces of `sequences` one after the other; returns
    (1, tokens, heads, dim)."""
    layer = module.layer_idx
    out = torch.empty_like(query)
    start = 0
    for sequence in sequences:
        n, begin = len(sequence.pending), sequence.length
        end = begin + n
        sequence.keys[layer, :, begin:end] = key[0, :, start : start + n]
        sequence.values[layer, :, begin:end] = value[0, :, start : start + n]
        out[0, :, start : start + n] = F.scaled_dot_product_attention(
            query[:, :, start : start + n].contiguous(),
            sequence.keys[layer : layer + 1, :, :end],
            sequence.values[layer : layer + 1, :, :end],
            # Several new tokens (a prompt, or a sampled token and the grammar's forced ones after it)
            # each see the keys before them: the mask's diagonal starts at the piece's offset.
            attn_mask=torch.ones(n, end, dtype=torch.bool).tril(begin) if n > 1 else None,
            scale=scaling,
            enable_gqa=True,
        )
        start += n
    return out.transpose(1, 2), None


def _in_fixed_blocks(model):
    """Every linear layer multiplies a prompt's rows padded to a multiple of BLOCK, in blocks of exactly
    BLOCK rows, and a sampled token's rows with the 4-bit kernel where the layer is 4-bit (see the
    module's docstring). Most CPU kernels sum each row of a larger product exactly as a block does;
    where the model's own shapes show that at load, the padded rows go in one product, which reads
    each weight once per step instead of once per block."""
    whole = _rows_sum_alike(model)
    head = model.get_output_embeddings()  # its rows are the pieces' last ones, not the step's rows

    def forward(layer, packed, x):
        rows = x.reshape(-1, x.shape[-1])
        split = model.prompt_rows if packed is not None else rows.shape[0]
        if split == rows.shape[0]:
            out = _in_blocks(layer, rows, whole)
        elif split == 0:
            out = _four_bit(rows, packed, layer.bias)
        else:  # a step that reads prompts and samples tokens: only then are two parts joined
            out = torch.cat([_in_blocks(layer, rows[:split], whole), _four_bit(rows[split:], packed, layer.bias)])
        return out.reshape(*x.shape[:-1], -1)

    with torch.inference_mode():
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                packed = None if layer is head else _packed(layer)
                layer.forward = functools.partial(forward, layer, packed)
    return model


def _in_blocks(layer, rows, whole: bool):
    count = rows.shape[0]
    padded = F.pad(rows, (0, 0, 0, -count % BLOCK))
    if whole:
        out = F.linear(padded, layer.weight, layer.bias)
    else:
        out = torch.cat([F.linear(block, layer.weight, layer.bias) for block in padded.split(BLOCK)])
    return out[:count]


def _four_bit(rows, packed, bias=None):
    weights, scales = packed
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.to(torch.bfloat16).contiguous(), weights, GROUP, scales)
    out = out.to(rows.dtype)
    return out if bias is None else out + bias


def _packed(layer):
    """The layer's weights for torch's 4-bit kernel, when every group of GROUP weights is a minimum plus
    steps 0-15 of one size (as a Q4_1 file's are, once read as floats) and the kernel sums each row
    of the layer's shape alone; None otherwise (the layer keeps its float product)."""
    n, k = layer.weight.shape
    if layer.weight.dtype != torch.float32 or not _four_bit_rows_alone(n, k):
        return None
    groups = layer.weight.detach().reshape(n, k // GROUP, GROUP)
    low = groups.amin(-1, keepdim=True)
    step = (groups.amax(-1, keepdim=True) - low) / 15
    levels = ((groups - low) / step.clamp_min(1e-30)).round()
    if not torch.all((levels * step + low - groups).abs() <= 1e-3 * step + 1e-12):
        return None
    scales = torch.cat([step, low + 8 * step], dim=-1).transpose(0, 1).to(torch.bfloat16).contiguous()
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels.reshape(n, k).int(), 2), scales


@functools.cache
def _four_bit_rows_alone(n: int, k: int) -> bool:
    """Whether torch's 4-bit kernel takes an (n, k) weight and gives each row alone what it gives it
    among others."""
    if k % GROUP or n % 64:
        return False
    generator = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=generator)
    scales = torch.rand(k // GROUP, n, 2, generator=generator).to(torch.bfloat16)
    x = torch.randn(3 * BLOCK, k, generator=generator)
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels, 2), scales
        return torch.equal(_four_bit(x, packed), torch.cat([_four_bit(row, packed) for row in x.split(1)]))
    except RuntimeError:  # this build of torch has no such kernel, or not for this shape
        return False


def _rows_sum_alike(model) -> bool:
    """Whether products of 3 and of 8 blocks give each row bit for bit what its block alone gives,
    for every linear layer's shape of the model."""
    shapes = {layer.weight.shape: layer for layer in model.modules() if isinstance(layer, torch.nn.Linear)}
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for layer in shapes.values():
            x = torch.randn(8 * BLOCK, layer.in_features, generator=generator, dtype=layer.weight.dtype)
            blocks = torch.cat([F.linear(block, layer.weight, layer.bias) for block in x.split(BLOCK)])
            for count in (3 * BLOCK, 8 * BLOCK):
                if not torch.equal(F.linear(x[:count], layer.weight, layer.bias), blocks[:count]):
                    return False
    return True


if __name__ == "__main__":  # `make install`: the shipped model converted at install, not in the first run
    from germinate.llm.gguf import default_model_path

    transformers_logging.disable_progress_bar()
    print(f"germinate: the embedded model, for torch: {_converted(default_model_path(), _fast_dtype())}")
