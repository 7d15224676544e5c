"""The LLM layer: one interface (`LLM.generate`), four backends."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from germinate.errors import UserError
from germinate.llm.base import LLM, Backend, Completion, Request, Result
from germinate.llm.cache import ResponseCache
from germinate.llm.gguf import resolve_model_path
from germinate.llm.limit import Limit
from germinate.settings import LLMConfig

__all__ = ["LLM", "Backend", "Completion", "Request", "Result", "check_llm", "checked", "make_llm"]

log = logging.getLogger(__name__)


def check_llm(config: LLMConfig) -> LLMConfig:
    """Fail early, before anything is written: a missing model, an unreachable server.

    Returns the config with what was found filled in (the server's model name),
    so the run records exactly what it used.
    """
    if config.backend == "transformers":
        resolve_model_path(config.model)
        return config
    if config.backend == "vllm":
        if not config.model:
            raise UserError("llm.model: the vllm backend needs a model name or path")
        return config
    if config.backend == "stand_in":
        return config.model_copy(update={"model": config.model or "stand-in"})
    from germinate.llm.openai_compat import ping_server, probe_server

    if not config.servers:
        raise UserError("llm.base_url: the openai backend needs a server URL (e.g. http://localhost:8000/v1)")
    api_key = os.environ.get(config.api_key_env)
    found, unreachable = {}, []
    for server in config.servers:
        try:
            found[server.base_url] = probe_server(server.base_url, api_key)
        except UserError as exc:
            if len(config.servers) == 1:
                raise
            unreachable.append(str(exc))
    if not found:
        raise UserError(f"llm.endpoints: no server answers ({'; '.join(unreachable)})")
    for problem in unreachable:  # it joins the rotation once it answers (a vLLM still loading its weights)
        log.warning("not answering yet: %s", problem)
    models, dialect = next(iter(found.values()))
    model = config.model or (models[0] if models else None)
    if model is None:
        raise UserError("llm.model: the server serves no models; name one")
    for base_url in found:
        ping_server(base_url, api_key, model)
    structured = dialect if config.structured_output == "auto" else config.structured_output
    return config.model_copy(update={"model": model, "structured_output": structured})


def checked(config: LLMConfig) -> LLMConfig:
    """The config as `check_llm` leaves it: a run's servers are asked once, before its shards, not
    again by every process that opens the run's LLM (a Ray worker)."""
    found = config.backend == "openai" and config.model is not None and config.structured_output != "auto"
    return config if found else check_llm(config)


def make_llm(config: LLMConfig, cache_path: Path | None, limit: Callable[[str], Limit] | None = None) -> LLM:
    """`limit(base_url)`: this process's limit for a server when the run's processes share its slots
    (Ray); by default each server's whole concurrency."""
    config = checked(config)
    backend: Backend
    if config.backend == "transformers":
        from germinate.llm.transformers_backend import TransformersBackend

        backend = TransformersBackend(resolve_model_path(config.model), n_ctx=config.n_ctx, rows=config.concurrency)
    elif config.backend == "stand_in":
        from germinate.llm.stand_in import StandInBackend

        backend = StandInBackend(config.model)
    elif config.backend == "vllm":
        from germinate.llm.vllm_offline import VLLMBackend

        backend = VLLMBackend(config.model, max_model_len=config.n_ctx)
    else:
        from germinate.llm.endpoints import Server, SpreadBackend
        from germinate.llm.openai_compat import OpenAIBackend

        api_key = os.environ.get(config.api_key_env)
        servers = [
            Server(
                OpenAIBackend(base_url, config.model, api_key, config.structured_output, config.timeout_s),
                concurrency,
                limit(base_url) if limit else None,
            )
            for base_url, concurrency in config.server_limits.items()
        ]
        backend = SpreadBackend(servers)
    cache = ResponseCache(cache_path) if (config.cache and cache_path) else None
    return LLM(
        backend,
        cache,
        concurrency=sum(config.server_limits.values()) or config.concurrency,
        max_retries=config.max_retries,
        backoff_s=config.backoff_s,
        outage_timeout_s=config.outage_timeout_s,
    )
