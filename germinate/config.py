"""The one config model of a run: defaults < YAML file < command-line overrides.

Its sections are germinate/settings.py's and one per strategy, declared in the strategy's own module
(germinate.generators): `RunConfig` is put together from the strategies found there."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from germinate.errors import UserError, describe_error, error_key
from germinate.filters import QUALITY
from germinate.filters import stages as filters
from germinate.generators import stages as generator_stages
from germinate.generators import strategies
from germinate.settings import (
    DATA_DIR,
    BudgetConfig,
    EmbeddingConfig,
    GenerationConfig,
    HubConfig,
    LLMConfig,
    OrchestrationConfig,
    Section,
)
from germinate.stage import Stage

log = logging.getLogger(__name__)


def known_stages() -> dict[str, type[Stage]]:
    """Every stage found, by name: respond (germinate.generators) and the filters, plugins' included."""
    return {**generator_stages(), **filters()}


# The config's `stages` unless it says otherwise: the stages that give themselves a place in it.
DEFAULT_STAGES = tuple(sorted((name for name, stage in known_stages().items() if stage.default_place is not None),
                              key=lambda name: known_stages()[name].default_place))


def _quality() -> type[Section]:
    """The `quality` section: a section per filter found (its module's `Settings`)."""
    order = {name: i for i, name in enumerate(DEFAULT_STAGES)}  # the default's order, then the plugins' by name
    sections = {}
    for name, stage in sorted(filters().items(), key=lambda item: (order.get(item[0], len(order)), item[0])):
        if stage.section:
            sections[stage.section.removeprefix(QUALITY)] = (stage.Settings, Field(default_factory=stage.Settings))
    return create_model("QualityConfig", __base__=Section, __module__=__name__,
                        __doc__="The quality gate's settings: a section per filter.", **sections)


QualityConfig = _quality()

# Stages renamed after 0.1.0, old name -> new: the old name is read in `stages` and as its `quality`
# section, with a warning, for one release.
RENAMED_STAGES = {"reflect": "judge"}


def with_new_names(data: dict[str, Any], warn: bool = True) -> dict[str, Any]:
    """A config's dict with the stages renamed after 0.1.0 called by their new names."""
    stages, quality = data.get("stages"), data.get("quality")
    old = [name for name in RENAMED_STAGES
           if (isinstance(stages, list) and name in stages) or (isinstance(quality, dict) and name in quality)]
    if not old:
        return data
    data = {**data}
    for name in old:
        new = RENAMED_STAGES[name]
        if warn:
            log.warning("the stage '%s' is now called '%s': write '%s' in stages and quality.%s; the old name "
                        "will stop working in the next release", name, new, new, new)
        if isinstance(stages, list):
            data["stages"] = stages = [new if stage == name else stage for stage in stages]
        if isinstance(quality, dict) and name in quality:
            if new in quality:
                raise ValueError(f"quality: give '{new}' or its old name '{name}', not both")
            data["quality"] = quality = {new if key == name else key: value for key, value in quality.items()}
    return data


class CommonConfig(Section):
    """The settings of every run; `RunConfig` adds one section per strategy."""

    seeds: Path = Field(DATA_DIR / "seeds" / "default.jsonl", description="JSONL, JSON, CSV or Parquet")
    strategies: dict[str, float]  # given its type below, from the strategies found
    llm: LLMConfig = Field(default_factory=LLMConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    hub: HubConfig = Field(default_factory=HubConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    stages: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STAGES),
        description="what happens to each record after expansion, in order: the stages that work record by record "
        "(as records are made), then those that compare the whole set; each switched in its section",
    )
    include_seeds: bool = Field(
        False, description="the seeds are rows of the dataset too, on top of budget.max_records (a seed without an "
        "answer is answered, from the LLM-call budget)",
    )
    output_dir: Path = Path("data/runs")
    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    random_seed: int = 0
    shard_size: int = Field(64, ge=1, description="records per shard (one Prefect task each)")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return with_new_names(data) if isinstance(data, dict) else data

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
        return {name: shares[name] for name in strategies() if name in shares}

    def switched_on(self, stage: type[Stage]) -> bool:
        """Whether `stage` runs: in `stages`, and switched on in its section."""
        return stage.name in self.stages and stage.enabled(self)

    @property
    def grown_per_row(self) -> float:
        """Records expansion grows for each row the dataset keeps: what the stages that choose among
        records ask for (selection's pool)."""
        return math.prod(getattr(stage.settings_in(self), stage.pool_setting)
                         for stage in known_stages().values() if stage.pool_setting and self.switched_on(stage))

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


def _with_strategies() -> type[CommonConfig]:
    found = {}
    for name, strategy in strategies().items():
        if strategy.section in (*CommonConfig.model_fields, "strategy"):
            log.warning("strategy '%s' left out: its section '%s' is a key of every run's config",
                        name, strategy.section)
        else:
            found[name] = strategy
    sections = {
        strategy.section: (strategy.Settings, Field(default_factory=strategy.Settings, description=strategy.summary()))
        for strategy in found.values()
    }
    return create_model(
        "RunConfig",
        __base__=CommonConfig,
        __module__=__name__,
        __doc__="A run's whole config: the common settings and a section per strategy.",
        strategies=(dict[Literal[tuple(found)], float], Field(
            {name: strategy.default_share for name, strategy in found.items() if strategy.default_share},
            description="strategies and their shares of the budget, e.g. {aide: 0.5, tcia: 0.3, glan: 0.2}",
        )),
        **sections,
    )


RunConfig = _with_strategies()


# Settings of where and how a run is executed or published, never of its data: a resume may change
# them (a run directory moved to another disk, another set of servers after one died, another repo).
NOT_DATA = (
    "output_dir", "run_id", "hub", "orchestration", "llm.base_url", "llm.endpoints", "llm.concurrency", "llm.timeout_s",
    "llm.outage_timeout_s", "budget.max_failed_share", "budget.allow_partial", "budget.price", "budget.max_tokens",
    "budget.max_cost",
)


def used_sections(settings: dict[str, Any]) -> list[str]:
    """The sections of the strategies a dumped config uses."""
    found = strategies()
    return [found[name].section for name in settings.get("strategies", {}) if name in found]


def data_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A dumped config without `NOT_DATA` (dotted keys) and the sections of strategies and filters it
    does not use (installed or not): the settings that shape a run's data."""
    used = used_sections(settings)
    kept = {key: value for key, value in settings.items() if key in CommonConfig.model_fields or key in used}
    found = filters()
    quality = settings.get("quality", {})

    def switched_on(name: str) -> bool:  # a stage added to the defaults since the run started is off there
        section = found[name].section.removeprefix(QUALITY)
        try:
            return found[name].switched_on_by(found[name].Settings.model_validate(quality.get(section, {})))
        except ValidationError:  # settings of another version: compared as they are
            return True

    kept["stages"] = [name for name in settings.get("stages", []) if name not in found or switched_on(name)]
    named = {found[name].section.removeprefix(QUALITY) for name in kept["stages"] if name in found}
    kept["quality"] = {key: value for key, value in quality.items() if key in named}
    for dotted in NOT_DATA:
        *parents, leaf = dotted.split(".")
        node = kept
        for part in parents:
            node[part] = node = {**node.get(part, {})}
        node.pop(leaf, None)
    return kept


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
        key = error_key(error)
        for dotted, flag in (flags or {}).items():
            value = (overrides or {}).get(dotted)
            if value is not None and (key == dotted or key.startswith(dotted + ".")):
                shown = next(iter(value)) if isinstance(value, dict) else value  # --strategy X is {X: 1.0}
                raise UserError(f"{flag} {shown}: {error['msg'].removeprefix('Value error, ')}") from None
        raise UserError(f"{where}: {describe_error(error)}") from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
