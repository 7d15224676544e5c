"""Prompt templates. A template's hash goes into each record's provenance; the rendered
messages go into the cache key, so a changed prompt is a cache miss."""

from __future__ import annotations

import hashlib
from string import Template

SYSTEM = (
    "You are a data synthesis assistant. You write and assess tasks that are used to "
    "teach AI assistants. Follow the requested JSON format exactly."
)


class Prompt:
    """A chat prompt: the shared system text first (servers cache common prefixes), then the user part."""

    def __init__(self, user: str, system: str = SYSTEM):
        self.system = system
        self.user = Template(user)
        self.hash = hashlib.sha256(f"{system}\x1f{user}".encode()).hexdigest()[:12]

    def messages(self, **values: object) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.substitute(**{k: str(v) for k, v in values.items()})},
        ]


def combine_hashes(*hashes: str | None) -> str:
    """One provenance hash for the set of templates a record went through."""
    return hashlib.sha256("+".join(h for h in hashes if h).encode()).hexdigest()[:12]
