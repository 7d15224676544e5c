"""Heuristic filters: cheap rules that drop malformed examples before any judge reads them.

Each rule is a method that returns why a record fails (or None); the first failing
rule names the drop reason, and what it matched is kept as the detail.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any, Callable

from py3langid.langid import MODEL_FILE, LanguageIdentifier
from pydantic import Field

from germinate.records import Record, normalize, show
from germinate.settings import StageSettings
from germinate.stage import Context, Filter


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


def _phrases(phrases: list[str]) -> re.Pattern | None:
    """One case-insensitive pattern; a phrase matches on word boundaries where it starts or ends with a word."""
    parts = [
        (r"\b" if p[:1].isalnum() else "") + re.escape(p) + (r"\b" if p[-1:].isalnum() else "")
        for p in phrases
        if p
    ]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def _found(pattern: re.Pattern | None, text: str) -> str | None:
    match = pattern.search(text.replace("\u2019", "'")) if pattern else None
    return match.group(0) if match else None


_loading = threading.Lock()


@functools.cache
def _identifier() -> LanguageIdentifier:
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identifier() -> LanguageIdentifier:
    """py3langid's model (in its wheel; no download), loaded once per process by the first
    `Heuristics` made, before its shard's first request: 0.7 s that every command (the config is
    made from the filters' modules) would otherwise pay at import."""
    with _loading:  # a run's shards start together: one loads, the others wait for it
        return _identifier()


def language(text: str) -> tuple[str, float]:
    """ISO 639-1 code and probability."""
    code, probability = identifier().classify(text)
    return code, float(probability)


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


class HeuristicsConfig(StageSettings):
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


class Heuristics(Filter):
    name = "heuristics"
    default_place = 20
    section = "quality.heuristics"
    Settings = HeuristicsConfig

    @classmethod
    def card_metadata(cls, settings: HeuristicsConfig) -> dict[str, Any]:
        return {"language": settings.languages} if settings.languages else {}

    @classmethod
    def warm(cls, settings: HeuristicsConfig) -> None:
        if settings.languages:
            identifier()

    def __init__(self, context: Context):
        super().__init__(context)
        config = self.settings
        self.warm(config)  # loaded while the run was checked; on a worker, here, before its first request
        self.unsupported = _phrases(config.unsupported)
        self.refusal = _phrases(config.refusals)
        self.leakage = _phrases(config.leakage)
        self.rules: list[tuple[str, Callable[[Record], str | None]]] = [
            ("empty_response", self.empty_response),
            ("truncated_response", self.truncated_response),
            ("too_short", self.too_short),
            ("too_long", self.too_long),
            ("response_too_long", self.response_too_long),
            ("unsupported_task", self.unsupported_task),
            ("refusal", self.refusal_response),
            ("template_leakage", self.template_leakage),
            ("copied_response", self.copied_response),
            ("wrong_language", self.wrong_language),
        ]

    def empty_response(self, r: Record) -> str | None:
        return "no answer" if not (r.output or "").strip() else None

    def truncated_response(self, r: Record) -> str | None:
        return "finish_reason length" if r.finish_reason == "length" else None

    def too_short(self, r: Record) -> str | None:
        words = _words(show(r))
        return f"{words} words < {self.settings.min_words}" if words < self.settings.min_words else None

    def too_long(self, r: Record) -> str | None:
        words = _words(show(r))
        return f"{words} words > {self.settings.max_words}" if words > self.settings.max_words else None

    def response_too_long(self, r: Record) -> str | None:
        words = _words(r.output)
        return f"{words} words > {self.settings.max_response_words}" if words > self.settings.max_response_words else None

    def unsupported_task(self, r: Record) -> str | None:
        return _found(self.unsupported, show(r))

    def refusal_response(self, r: Record) -> str | None:
        # A refusal opens the answer; an apology email's "I'm sorry" further on is the task done.
        first_sentence = re.split(r"[.!?\n]", (r.output or "").strip(), maxsplit=1)[0]
        return _found(self.refusal, first_sentence)

    def template_leakage(self, r: Record) -> str | None:
        return _found(self.leakage, f"{show(r)}\n{r.output or ''}")

    def copied_response(self, r: Record) -> str | None:
        answer = normalize(r.output or "")
        copied = answer in (normalize(r.instruction), normalize(r.input or ""))
        return "the answer repeats the task" if copied else None

    def wrong_language(self, r: Record) -> str | None:
        if not self.settings.languages:
            return None
        code, probability = language(show(r))
        if code in self.settings.languages or probability < self.settings.min_language_confidence:
            return None
        return f"{code} ({probability:.2f})"

    def check(self, record: Record) -> tuple[str, str] | None:
        """The first rule the record fails, as (reason, what matched)."""
        for reason, rule in self.rules:
            detail = rule(record)
            if detail is not None:
                return reason, detail
        return None
