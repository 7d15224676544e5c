"""Diversity selection (kMQ) on real embeddings of a few hundred instructions."""

import dataclasses
import itertools

import numpy as np
import pytest

from conftest import make_stage, run_stage
from germinate.embed import embed
from germinate.filters.select import Select, choose_k, silhouette, split_budget, weighted_sample
from germinate.records import Record


def select_diverse(records, size: int, seed: int, **settings):
    """kMQ as a run does it: `size` rows, selection `settings`, embeddings of the records' tasks."""
    stage = make_stage(Select, budget__max_records=size, random_seed=seed,
                       **{f"quality__select__{key}": value for key, value in settings.items()})
    return run_stage(stage, records)

# Eight kinds of task, each many ways: 320 instructions with a cluster structure a user would recognise.
FAMILIES = [
    ("Write a Python function that {} a list of {}.", ["sorts", "reverses", "deduplicates", "sums", "filters"],
     ["integers", "strings", "dates", "prices", "file names", "temperatures", "email addresses", "scores"]),
    ("Give me a recipe for {} with {}.", ["soup", "a salad", "pasta", "a curry", "bread"],
     ["lentils", "chicken", "mushrooms", "tofu", "spinach", "chickpeas", "salmon", "pumpkin"]),
    ("Plan a {} trip to {} on a small budget.", ["three-day", "week-long", "weekend", "family", "solo"],
     ["Lisbon", "Kyoto", "Mexico City", "Prague", "Cape Town", "Hanoi", "Montreal", "Istanbul"]),
    ("A shop sells {} for ${} each. How much do 7 of them cost with a 15% discount?",
     ["notebooks", "pens", "mugs", "lamps", "chairs"], ["3", "4.50", "12", "19.99", "25", "40", "7.25", "99"]),
    ("Write a short poem about {} in the style of {}.", ["the sea", "winter", "a lost key", "the moon", "coffee"],
     ["a haiku", "a sonnet", "a limerick", "free verse", "a ballad", "an ode", "a nursery rhyme", "a villanelle"]),
    ("Explain the causes of {} to a {} student.", ["the French Revolution", "World War I", "the Great Depression",
     "the fall of Rome", "the Cold War"], ["high school", "first-year", "curious", "ten-year-old", "history",
                                           "graduate", "adult", "exchange"]),
    ("What are the early symptoms of {} and when should a {} see a doctor?", ["diabetes", "anemia", "asthma",
     "migraine", "dehydration"], ["child", "runner", "pregnant woman", "senior", "teenager", "office worker",
                                  "new parent", "student"]),
    ("How should a {} invest {} for retirement?", ["nurse", "teacher", "freelancer", "small business owner",
     "software engineer"], ["$200 a month", "a bonus", "an inheritance", "savings", "$10,000", "stock options",
                            "a pension", "spare cash"]),
]
TEXTS = [t.format(a, b) for t, firsts, seconds in FAMILIES for a, b in itertools.product(firsts, seconds)]


@pytest.fixture(scope="module")
def pool():
    records = [Record(id=f"r{i}", instruction=text, strategy="aide", hop=1) for i, text in enumerate(TEXTS)]
    return records, embed(TEXTS)


def coverage(ids, cluster_of) -> int:
    return len({cluster_of[i] for i in ids})


@pytest.mark.parametrize("split", ["proportional", "equal"])
def test_selection_covers_more_clusters_than_random(pool, split):
    records, vectors = pool
    kept, rejected = select_diverse(records, 24, 0, clusters=24, split=split)
    assert len(kept) == 24 and len(kept) + len(rejected) == len(records)
    cluster_of = {r.id: r.cluster for r in kept + rejected}
    rng = np.random.default_rng(1)
    random_coverage = [coverage(rng.choice(list(cluster_of), 24, replace=False), cluster_of) for _ in range(50)]
    covered = coverage([r.id for r in kept], cluster_of)
    assert covered > np.mean(random_coverage) + 2  # random subsets of 24 cover about 14 of 24
    if split == "equal":
        assert covered == 24  # one from every cluster
    assert all(r.drop_reason == "not_selected" and r.drop_detail.startswith(f"cluster {r.cluster} ") for r in rejected)


def test_selection_is_deterministic_per_seed(pool):
    records, vectors = pool
    first = [r.id for r in select_diverse(records, 30, 3, clusters=8)[0]]
    again = [r.id for r in select_diverse(records, 30, 3, clusters=8)[0]]
    other = [r.id for r in select_diverse(records, 30, 4, clusters=8)[0]]
    assert first == again and first != other


def test_k_is_chosen_by_silhouette_near_the_number_of_task_kinds(pool):
    _, vectors = pool
    assert choose_k(vectors, budget=100, sample=2000) in (4, 8, 16)


def test_the_silhouette_is_scikit_learns(pool):
    """The run computes the silhouette itself (importing scikit-learn took 0.85 s of a run's end); it
    agrees with scikit-learn's, singleton clusters included."""
    from sklearn.metrics import silhouette_score

    from germinate.kmeans import spherical_kmeans

    _, vectors = pool
    for k in (2, 8, 100):
        labels = spherical_kmeans(vectors, k).assignments
        assert abs(silhouette(vectors, labels) - silhouette_score(vectors, labels, metric="cosine")) < 1e-5
    alone = np.array([0] * (len(vectors) - 1) + [1])  # a cluster of one point
    assert abs(silhouette(vectors, alone) - silhouette_score(vectors, alone, metric="cosine")) < 1e-5


def test_quality_weighs_inside_a_cluster(pool):
    records, vectors = pool
    for i, record in enumerate(records):
        record.quality_score = 9.0 if i % 2 else 1.0
    kept, _ = select_diverse(records, 40, 0, clusters=8)
    assert sum(r.quality_score == 9.0 for r in kept) >= 30  # chance alone would give about 20
    for record in records:
        record.quality_score = None


def test_seeds_that_are_rows_are_kept_on_top_of_the_generated_rows(pool):
    """With `include_seeds`, the seeds come on top: `max_records` generated rows are chosen among the
    generated ones, whatever the number of seeds."""
    records, _ = pool
    seeds = [dataclasses.replace(r, id=f"seed-{r.id}", strategy="seed", hop=0) for r in records[:40:2]]
    kept, rejected = select_diverse(seeds + records[40:], 12, 0, clusters=8)
    assert sum(r.strategy == "seed" for r in kept) == len(seeds) == 20
    assert sum(r.strategy == "aide" for r in kept) == 12
    assert all(r.strategy == "aide" for r in rejected)


def test_weighted_sample_follows_the_weights():
    rng = np.random.default_rng(0)
    picks = [weighted_sample(np.array([1.0, 9.0]), 1, rng)[0] for _ in range(2000)]
    assert 0.85 < np.mean(picks) < 0.95


def test_budget_split():
    assert split_budget([50, 30, 20], 10, "proportional") == [5, 3, 2]
    assert sum(split_budget([7, 5, 1], 6, "proportional")) == 6
    assert split_budget([50, 3, 1], 9, "equal") == [5, 3, 1]  # small clusters give what they cannot use
    assert split_budget([2, 2], 10, "equal") == [2, 2]  # never more than there is
    assert split_budget([0, 0], 5, "proportional") == [0, 0]  # nothing to choose from
