"""A stand-in for the model: it answers every request at once, as a capable model would, and sends
nothing. `germinate run --dry-run` runs the real pipeline on it to count what a run will ask.

An answer has its request's shape: an instance of the JSON schema (its lists as long as they may be,
its scores the best: every task is judged good), or text as long as `max_tokens` allows. Words are
drawn by a hash of the request, so no two answers are alike and no check takes one for a duplicate,
a refusal or another language."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from germinate.llm.base import Backend, Completion, Request

# Plain English words (none a stop word, a refusal or a template's): the filters keep the text.
WORDS = (
    "river garden market engine theory lantern harbor recipe planet budget signal forest canvas ladder "
    "museum journey battery compass village circuit meadow chapter orchard glacier pattern silver window "
    "teacher science history painting kitchen mountain library holiday network picture morning harvest "
    "bridge doctor farmer student poetry rhythm weather island desert ocean valley castle theater festival "
    "measure explain compare describe improve design gather balance collect arrange develop discover "
    "bright quiet careful gentle ancient modern simple clever useful steady narrow golden rapid honest"
).split()
CHARS_PER_TOKEN = 4  # the usual measure of English text in a BPE tokenizer's tokens


def _instance(schema: dict[str, Any], defs: dict[str, Any], rng: random.Random) -> Any:
    if "$ref" in schema:
        return _instance(defs[schema["$ref"].split("/")[-1]], defs, rng)
    if "anyOf" in schema:
        return _instance(schema["anyOf"][0], defs, rng)
    if "enum" in schema:  # a check passes, a score is the best
        numbers = all(isinstance(value, (int, float)) for value in schema["enum"])
        return "yes" if "yes" in schema["enum"] else max(schema["enum"]) if numbers else schema["enum"][-1]
    kind = schema.get("type")
    if kind == "object":
        return {key: _instance(sub, defs, rng) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        count = schema.get("maxItems", max(schema.get("minItems", 1), 3))
        return [_instance(schema.get("items", {"type": "string"}), defs, rng) for _ in range(count)]
    if kind in ("integer", "number"):
        return schema.get("maximum", 7)
    if kind == "boolean":
        return True
    return _text(rng, min(schema.get("maxLength", 80), 80))


def _text(rng: random.Random, chars: int) -> str:
    """About `chars` characters of words (three at least), as a sentence."""
    words = [rng.choice(WORDS) for _ in range(3)]
    while len(" ".join(words)) < chars - 12:
        words.append(rng.choice(WORDS))
    return (" ".join(words)[: chars - 1].rstrip() if len(words) > 3 else " ".join(words)).capitalize() + "."


def tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


class StandInBackend(Backend):
    def __init__(self, model: str):
        self.model = model
        self.location = "a stand-in model (nothing is sent)"

    async def complete(self, request: Request, schema: dict[str, Any] | None) -> Completion:
        rng = random.Random(hashlib.sha256(json.dumps([request.messages, request.seed]).encode()).digest())
        if schema is None:
            text = _text(rng, request.max_tokens * CHARS_PER_TOKEN)
        else:
            text = json.dumps(_instance(schema, schema.get("$defs", {}), rng))
        return Completion(text, "stop", prompt_tokens=sum(tokens(m["content"]) for m in request.messages),
                          completion_tokens=min(tokens(text), request.max_tokens))
