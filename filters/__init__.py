"""The quality gate: a stage per module (germinate.stage.Stage), found by `stages()`; dedup.py
holds what the dedup stages share.

A new filter is one new module here with a `Filter` (or `Stage`) subclass, its `section`
(`quality.<name>`) and its `Settings` (if it has any beyond `enabled`), and its name in the
config's `stages` order; the config's `quality` is made from the filters found. A filter in
another package is found through its entry point in the group `germinate.stages`."""

from __future__ import annotations

import logging
import sys
from functools import cache

from germinate.stage import Stage, discover_with_plugins

ENTRY_POINTS = "germinate.stages"
QUALITY = "quality."  # where a filter's section is
log = logging.getLogger(__name__)


@cache
def stages() -> dict[str, type[Stage]]:
    found = discover_with_plugins(sys.modules[__name__], Stage, ENTRY_POINTS, "stage")
    for name, stage in list(found.items()):
        if stage.section and not stage.section.startswith(QUALITY):
            log.warning("stage '%s' left out: its section '%s' is not under 'quality'", name, stage.section)
            del found[name]
    return found
