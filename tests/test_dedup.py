"""Exact, MinHash and semantic dedup on small sets with planted duplicates."""

import numpy as np

from conftest import make_stage, run_stage
from germinate.filters.exact_dedup import ExactDedup
from germinate.filters.near_dedup import NearDedup
from germinate.filters.semantic_dedup import SemanticDedup, semantic_duplicates
from germinate.records import Record, normalize

EVENS = ("Write a Python function that takes a list of integers and returns a new list containing only "
         "the even numbers, keeping their original order.")
PLANTED = {
    "evens": EVENS,
    "evens-punct": EVENS.upper().replace(",", " --").replace(".", "!"),  # case and punctuation only
    "evens-word": EVENS.replace("integers", "numbers"),  # one word replaced
    "evens-swap": EVENS.replace("original order", "order original"),  # two words swapped
    "longest": "Write a Python function that takes a list of strings and returns the longest string in it.",
    "haiku": "Write a haiku about the first snowfall in a city.",
}


def records(texts: dict[str, str], **fields) -> list[Record]:
    return [Record(id=key, instruction=text, **fields) for key, text in texts.items()]


def test_normalize_ignores_case_whitespace_and_punctuation():
    assert normalize("  Hello,   WORLD!\n") == normalize("hello world") == "hello world"


def test_exact_dedup_merges_only_normalised_copies():
    kept, rejected = run_stage(make_stage(ExactDedup), records(PLANTED))
    assert [r.id for r in kept] == ["evens", "evens-word", "evens-swap", "longest", "haiku"]
    (copy,) = rejected
    assert (copy.id, copy.duplicate_of, copy.drop_stage, copy.drop_reason) == (
        "evens-punct", "evens", "exact_dedup", "duplicate")


def test_exact_dedup_is_online_first_come_first_kept():
    stage = make_stage(ExactDedup)
    first, _ = run_stage(stage, records({"a": "Write a haiku about autumn.", "b": "Name three rivers."}))
    kept, rejected = run_stage(stage, records({"c": "write a haiku about AUTUMN", "d": "Name four rivers."}))
    assert [r.id for r in first + kept] == ["a", "b", "d"] and rejected[0].duplicate_of == "a"


def test_near_dedup_merges_word_swaps_and_keeps_distinct_tasks():
    kept, rejected = run_stage(make_stage(NearDedup), records(PLANTED))
    assert [r.id for r in kept] == ["evens", "longest", "haiku"]
    assert {r.id: r.duplicate_of for r in rejected} == {"evens-punct": "evens", "evens-word": "evens", "evens-swap": "evens"}
    assert all(r.drop_detail.startswith("jaccard ") for r in rejected)


def test_near_dedup_threshold_is_configurable():
    kept, _ = run_stage(make_stage(NearDedup, quality__near_dedup__threshold=0.95), records(PLANTED))
    assert {"evens-word", "evens-swap"} <= {r.id for r in kept}  # similar, not similar enough
    kept, _ = run_stage(make_stage(NearDedup, quality__near_dedup__threshold=0.2), records(PLANTED))
    assert "longest" not in {r.id for r in kept}  # shares "write a python function that takes a list of"


PARAPHRASES = [  # all-MiniLM-L6-v2 cosine above 0.95
    ("How do I reverse a string in Python?", "How can I reverse a string using Python?"),
    ("Write a haiku about the first snowfall in a city.", "Compose a haiku about a city's first snowfall."),
    ("Give me three tips for sleeping better at night.", "Share three tips that help me sleep better at night."),
]
LOOSE_PARAPHRASES = [  # cosine 0.93-0.94: merged with a wider eps
    ("What is the capital of Australia?", "Which city is the capital of Australia?"),
    ("Explain the difference between a list and a tuple in Python.",
     "What is the difference between a Python list and a Python tuple?"),
]
DISTINCT = ["How do I reverse a linked list in Java?", "Write a limerick about a cat who loves cheese.",
            "What is the capital of Austria?", "Give me three tips for a job interview.", "Explain how a hash map works."]


def semantic(pairs, eps: float):
    texts = {f"p{i}-{j}": text for i, pair in enumerate(pairs) for j, text in enumerate(pair)}
    texts |= {f"d{i}": text for i, text in enumerate(DISTINCT)}
    stage = make_stage(SemanticDedup, quality__semantic_dedup__eps=eps, quality__semantic_dedup__cluster_size=4)
    return run_stage(stage, records(texts))


def test_semantic_dedup_keeps_the_seed_then_the_better_answer():
    seed = Record(id="seed", instruction=PARAPHRASES[0][0], strategy="seed")
    low, high = (Record(id=key, instruction=PARAPHRASES[0][1], strategy="aide", quality_score=score)
                 for key, score in (("low", 3.0), ("high", 8.0)))
    other = Record(id="other", instruction=PARAPHRASES[1][0], strategy="aide", quality_score=2.0)
    kept, rejected = run_stage(make_stage(SemanticDedup, quality__semantic_dedup__cluster_size=4),
                               [low, high, other, seed])
    assert {r.id for r in kept} == {"seed", "other"} and {r.duplicate_of for r in rejected} == {"seed"}
    kept, rejected = run_stage(make_stage(SemanticDedup, quality__semantic_dedup__cluster_size=4), [low, high, other])
    assert {r.id for r in kept} == {"high", "other"} and rejected[0].duplicate_of == "high"


def test_semantic_dedup_merges_paraphrases_and_keeps_distinct_tasks():
    kept, rejected = semantic(PARAPHRASES + LOOSE_PARAPHRASES, eps=0.05)
    assert len(rejected) == 3 and all(r.drop_detail.startswith("cosine 0.9") for r in rejected)
    assert {r.id for r in rejected} | {r.duplicate_of for r in rejected} == {
        "p0-0", "p0-1", "p1-0", "p1-1", "p2-0", "p2-1"}  # one of each pair kept, pointing at the other
    assert {f"d{i}" for i in range(len(DISTINCT))} <= {r.id for r in kept}
    assert {"p3-0", "p3-1", "p4-0", "p4-1"} <= {r.id for r in kept}
    kept, rejected = semantic(PARAPHRASES + LOOSE_PARAPHRASES, eps=0.1)
    assert len(rejected) == 5 and {f"d{i}" for i in range(len(DISTINCT))} <= {r.id for r in kept}


def test_semantic_duplicates_keep_the_farther_from_centroid_and_follow_chains():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=32)
    # three near-identical vectors and one far one, in one cluster
    vectors = np.stack([centre + rng.normal(scale=s, size=32) for s in (0.01, 0.02, 0.03, 3.0)]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    found = semantic_duplicates(vectors, [()] * 4, eps=0.05, clusters=1)
    (kept_near,) = {0, 1, 2} - set(found)
    assert set(found) == {0, 1, 2} - {kept_near} and all(of == kept_near for of, _ in found.values())
    centroid = vectors.mean(axis=0) / np.linalg.norm(vectors.mean(axis=0))
    assert kept_near == min((0, 1, 2), key=lambda i: vectors[i] @ centroid)  # the least prototypical one
