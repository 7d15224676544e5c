"""Heuristic filters: cheap rules that drop malformed examples before any judge reads them.

Each rule is a method that returns why a record fails (or None); the first failing
rule names the drop reason, and what it matched is kept as the detail.
"""

from __future__ import annotations

import re
from typing import Callable

from py3langid.langid import MODEL_FILE, LanguageIdentifier

from germinate.records import Record, normalize, show
from germinate.stage import Context, Filter


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


# Loaded with the module, before a run's first request: loading it later would hold the interpreter
# while requests wait to be sent.
IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language(text: str) -> tuple[str, float]:
    """ISO 639-1 code and probability (py3langid's model ships in its wheel; no download)."""
    code, probability = IDENTIFIER.classify(text)
    return code, float(probability)


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


class Heuristics(Filter):
    name = "heuristics"
    section = "quality.heuristics"

    def __init__(self, context: Context):
        super().__init__(context)
        config = self.settings
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
