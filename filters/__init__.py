"""The quality gate: one stage per module (germinate.stage.Stage), found by `stages()`.

A new filter is a new module here with a `Filter` (or `Stage`) subclass, its settings section in
germinate/settings.py (`quality.<name>`), and its name in the config's `stages` order."""

from __future__ import annotations

import sys
from functools import cache

from germinate.stage import Stage, discover


@cache
def stages() -> dict[str, type[Stage]]:
    return discover(sys.modules[__name__], Stage)
