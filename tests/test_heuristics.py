"""Each heuristic rule on hand-written examples that must fail it and examples that must pass."""

import asyncio
import dataclasses

import pytest

from germinate.config import RunConfig
from germinate.filters.heuristics import Heuristics
from germinate.records import Record
from germinate.stage import Context


def heuristics(**settings) -> Heuristics:
    return Heuristics(Context(RunConfig(quality={"heuristics": settings})))

GOOD = Record(
    id="good",
    instruction="Write a Python function that checks whether a number is prime.",
    output="def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))",
    model="m",
    finish_reason="stop",
)


def verdict(**changes) -> str | None:
    """The rule that drops GOOD with `changes`, or None."""
    failed = heuristics().check(dataclasses.replace(GOOD, **changes))
    return failed[0] if failed else None


@pytest.mark.parametrize(
    "reason, changes",
    [
        ("empty_response", {"output": "  "}),
        ("truncated_response", {"finish_reason": "length"}),
        ("too_short", {"instruction": "Summarise."}),
        ("too_long", {"instruction": "word " * 401}),
        ("response_too_long", {"output": "word " * 2001}),
        ("unsupported_task", {"instruction": "Describe what is happening in the image I attached."}),
        ("unsupported_task", {"instruction": "Browse the company's careers page and list the open roles."}),
        ("unsupported_task", {"instruction": "Draw a picture of a cat sitting on a windowsill."}),
        ("refusal", {"output": "I'm sorry, but I cannot help with that request."}),
        ("refusal", {"output": "As an AI language model, I do not have opinions about football."}),
        ("refusal", {"output": "I\u2019m sorry, I can\u2019t do that."}),
        ("template_leakage", {"instruction": "New task: Write a function that reverses a list."}),
        ("template_leakage", {"output": "Topic: sorting\nAttribute: recursion\nHere is the code."}),
        ("template_leakage", {"output": "def f():\n    pass<|im_end|>"}),
        ("copied_response", {"output": "Write a Python function that checks whether a number is PRIME"}),
        ("wrong_language", {"instruction": "Écrivez une fonction Python qui vérifie si un nombre est premier."}),
        ("wrong_language", {"instruction": "Schreibe eine Funktion, die prüft, ob eine Zahl eine Primzahl ist."}),
    ],
)
def test_rule_drops_its_positive(reason, changes):
    assert verdict(**changes) == reason


@pytest.mark.parametrize(
    "changes",
    [
        {},  # the well-formed example
        {"instruction": "Write a Python script that counts the lines of a CSV file."},  # a file as a topic is fine
        {"output": "Subject: Your order\n\nDear Ana, thank you for your patience. I'm sorry the parcel was late."},
        {"instruction": "Write an email to a customer apologising for a late delivery.",
         "output": "Dear customer, we apologise for the delay and have refunded your shipping fee."},
        {"instruction": "What is the topic sentence of a paragraph, and where does it usually go?"},
        {"instruction": "SELECT name FROM users; explain what this SQL statement returns."},  # code: no language
        {"finish_reason": None},  # an answer that came with the seed
    ],
)
def test_rule_keeps_its_negative(changes):
    assert verdict(**changes) is None


def test_rules_are_configurable():
    french = Record(id="fr", instruction="Écrivez une fonction Python qui vérifie si un nombre est premier.",
                    output="def est_premier(n): ...")
    assert heuristics(languages=["en", "fr"]).check(french) is None
    assert heuristics(languages=[]).check(french) is None
    short = Record(id="s", instruction="Summarise.", output="Fine.")
    assert heuristics(min_words=1).check(short) is None
    assert heuristics(refusals=["Fine"]).check(short)[0] == "too_short"


def test_each_drop_keeps_its_rule_and_what_matched():
    records = [GOOD, Record(id="r", instruction=GOOD.instruction, output="I am sorry, I cannot do that.")]
    kept, rejected = asyncio.run(heuristics().run(records))
    assert [r.id for r in kept] == ["good"]
    (dropped,) = rejected
    assert (dropped.drop_stage, dropped.drop_reason, dropped.drop_detail) == ("heuristics", "refusal", "I am sorry")
