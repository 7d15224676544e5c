"""The one shape of a step of a run: records in, (kept, rejected) out.

A stage is one class in one file (generators/, filters/). The executor (germinate/executor.py)
runs any stage the same way, counts what it keeps and drops, times it, writes its rejected
records with their reasons, and knows none of them by name.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar, TypeVar

from germinate.records import Record
from germinate.settings import Section, StageSettings

if TYPE_CHECKING:
    import numpy as np

    from germinate.config import RunConfig
    from germinate.llm import LLM

Outcome = tuple[list[Record], list[Record]]  # (kept, rejected: each with its stage and reason)
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a stage or a strategy may use: the run's config, its LLM and unit vectors of texts
    (embedded off the critical path, cached in the run directory); None where nothing uses them
    (planning a run's units)."""

    config: RunConfig
    llm: LLM | None = None
    vectors: Callable[[list[str]], Awaitable[np.ndarray]] | None = None


def discover(package: ModuleType, base: type[T]) -> dict[str, type[T]]:
    """Every concrete subclass of `base` in the modules of `package`, by its `name`: adding a filter or
    a strategy is adding a module."""
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found.update({cls.name: cls for cls in defined_in(module, base)})
    return found


def discover_with_plugins(package: ModuleType, base: type[T], group: str, kind: str) -> dict[str, type[T]]:
    """`discover`, and what other installed packages name under the entry point `group` (a module, or
    module:Class). A plugin that does not load, or whose name or settings section is taken, is left
    out with a warning (`kind` names what it is): another package's fault must not stop every command."""
    found = discover(package, base)
    for point in entry_points(group=group):
        try:
            loaded = point.load()
        except Exception as exc:
            log.warning("%s entry point '%s' (%s) does not load, left out: %s", kind, point.name, point.value, exc)
            continue
        for cls in [loaded] if isinstance(loaded, type) else defined_in(loaded, base):
            taken = {other.section for other in found.values() if other.section}
            if not issubclass(cls, base):
                log.warning("entry point '%s' left out: %s is not a %s", point.name, point.value, kind)
            elif cls.name in found or cls.section in taken:
                log.warning("%s '%s' from entry point '%s' left out: its name or section '%s' is taken",
                            kind, cls.name, point.name, cls.section)
            else:
                found[cls.name] = cls
    return found


def defined_in(module: ModuleType, base: type[T]) -> list[type[T]]:
    """The concrete subclasses of `base` that `module` defines (not those it imports)."""
    return [
        value for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, base) and value.__module__ == module.__name__
        and not inspect.isabstract(value)
    ]


class Stage(ABC):
    """`name` is the stage's name in the config's `stages` list, its stats and its folder.

    Per-record stages (the default) run while records are made, each record on its own as it
    arrives; an `ordered` one (online dedup) takes them one at a time in the run's fixed order, so
    first come is first kept the same way every run. A `whole_set` stage runs once, after every
    per-record stage, on all the records that came through (semantic dedup, selection).
    """

    name: ClassVar[str]
    section: ClassVar[str | None] = None  # its settings in the config, dotted ("quality.heuristics")
    # A filter's settings section, under `quality` in the config (the run's config is made from the
    # filters found): `enabled` alone unless it declares more.
    Settings: ClassVar[type[Section]] = StageSettings
    whole_set: ClassVar[bool] = False
    ordered: ClassVar[bool] = False
    calls_llm: ClassVar[bool] = False
    # A whole-set stage that reads every record's vector: the run embeds each record while it is made.
    compares_vectors: ClassVar[bool] = False
    # Where it goes in the config's default `stages` (lowest first); None: only where a config lists it
    # (a plugin's stage: installing a package does not change every run).
    default_place: ClassVar[int | None] = None
    # The name of its setting that says how many records it is given per record it keeps (selection's
    # pool): expansion grows that many more.
    pool_setting: ClassVar[str | None] = None

    @classmethod
    def warm(cls, settings: Section | None) -> None:
        """Load now what the stage loads once per process (a model, a library that is slow to import):
        called in a thread while a run is checked, so that its shards' first requests do not wait on
        it. Default: nothing."""

    @classmethod
    def card_metadata(cls, settings: Section) -> dict[str, Any]:
        """What it adds to the metadata of the dataset card of a run it is switched on in (the
        heuristics: the languages they keep). Default: nothing."""
        return {}

    @classmethod
    def check_inputs(cls, settings: Section) -> None:
        """Once, in the driver, before anything is written: what it reads besides records (a file, a
        dataset) is read here, and a problem is a UserError naming the setting. Default: nothing."""

    @classmethod
    def note(cls, settings: Section, dropped: Callable[[], list[Record]]) -> str:
        """What it did, in a sentence, for the report, the summary and the dataset card of a run it ran
        in (decontamination: the benchmarks it checked, and the rows each removed); `dropped()` reads
        the records it dropped. Default: nothing."""
        return ""

    def __init__(self, context: Context):
        self.context = context
        self.config = context.config
        self.settings = self.settings_in(context.config)

    @classmethod
    def settings_in(cls, config: RunConfig):
        """This stage's section of `config` (None when it has none)."""
        found = config
        for part in cls.section.split(".") if cls.section else []:
            found = getattr(found, part)
        return found if cls.section else None

    @classmethod
    def enabled(cls, config: RunConfig) -> bool:
        return cls.switched_on_by(cls.settings_in(config))

    @classmethod
    def switched_on_by(cls, settings: Section | None) -> bool:
        """Whether its section switches it on: `enabled` (a stage may ask for more)."""
        return getattr(settings, "enabled", True)

    @abstractmethod
    async def run(self, records: list[Record]) -> Outcome: ...

    @classmethod
    def calls_for(cls, config: RunConfig, answered: bool) -> int:
        """LLM calls it makes for one record as the record arrives (`answered`: it came with its answer);
        the record's maker reserves them, and a stage that calls the LLM must say how many here (its
        last look spends what the shard has left). Default: none."""
        return 0

    @classmethod
    def has_last_look(cls) -> bool:
        """Whether it overrides `finish`."""
        return cls.finish is not Stage.finish

    async def finish(self, records: list[Record], calls: int) -> Outcome:
        """At the end of a shard, with the records this stage kept there and the LLM calls the shard
        has left: a last look (the judge revises the weakest answers with them). Default: keep all."""
        return records, []


class Filter(Stage):
    """A per-record decision and nothing else: `check` says why a record is dropped, or None."""

    @abstractmethod
    def check(self, record: Record) -> tuple[str, str | None] | None:
        """(reason, detail) when the record is dropped; None when it is kept."""

    async def run(self, records: list[Record]) -> Outcome:
        kept, rejected = [], []
        for record in records:
            why = self.check(record)
            if why is None:
                kept.append(record)
            else:
                rejected.append(record.dropped(self.name, *why))
        return kept, rejected
