"""Diversity and relevance metrics, and `germinate compare` over run directories."""

import numpy as np

from germinate.io import write_records
from germinate.metrics import distinct_bigrams, mean_pairwise_distance
from germinate.records import Record, show
from germinate.runs import Run
from test_cli import germinate

SEEDS = [Record(id="s1", instruction="Write a Python function that reverses a string.")]
DIVERSE = [
    "Give me a recipe for lentil soup with spinach.",
    "Plan a three-day trip to Kyoto on a small budget.",
    "Explain the causes of the French Revolution to a high school student.",
    "Write a sonnet about a lost key.",
    "How should a nurse invest $200 a month for retirement?",
    "What are the early symptoms of anemia in a runner?",
    "Write a Python function that sorts a list of dates.",
    "A shop sells mugs for $12 each. How much do 7 cost with a 15% discount?",
]
ALIKE = [
    "Write a Python function that reverses a string.",
    "Write a Python function to reverse a string.",
    "Create a Python function that reverses a given string.",
    "Write a function in Python that returns a string reversed.",
    "Implement a Python function which reverses a string.",
    "Write Python code for a function that reverses a string.",
    "Write a short Python function that reverses the input string.",
    "Code a Python function that reverses a text string.",
]


def fake_run(root, instructions: list[str]) -> Run:
    """A finished run's files as the flow writes them (no LLM needed to measure a dataset)."""
    run = Run(root)
    rows = SEEDS + [Record(id=f"r{i}", instruction=t, strategy="aide", hop=1) for i, t in enumerate(instructions)]
    (root / "config.yaml").parent.mkdir(parents=True)
    (root / "config.yaml").write_text("strategy: aide\n")
    write_records(run.seeds_path, SEEDS)
    write_records(root / "stages" / "expand" / "kept-00000.parquet", rows)
    write_records(root / "stages" / "expand" / "rejected-00000.parquet", [])
    write_records(run.dataset_dir / "data" / "train-00000-of-00001.parquet", rows)
    return run


def test_mean_pairwise_distance_equals_the_pairwise_mean():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = vectors @ vectors.T
    brute = 1 - (cosines.sum() - 50) / (50 * 49)
    assert abs(mean_pairwise_distance(vectors) - brute) < 1e-9


def test_distinct_bigrams():
    assert distinct_bigrams(["a b c", "a b d"]) == 3 / 4  # (a b) twice, (b c), (b d)
    assert distinct_bigrams(["one"]) == 0.0


def test_compare_ranks_a_diverse_run_above_a_run_of_paraphrases(tmp_path):
    fake_run(tmp_path / "diverse", DIVERSE)
    fake_run(tmp_path / "alike", ALIKE)
    result = germinate("compare", str(tmp_path / "diverse"), str(tmp_path / "alike"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in result.stdout.splitlines() if line.startswith("│")}
    diverse, alike = lines["diverse"], lines["alike"]
    assert diverse[0] == alike[0] == "9/9"  # kept/generated
    assert float(diverse[1]) > float(alike[1]) + 0.3  # pairwise distance
    covered = [int(cell.split("/")[0]) for cell in (diverse[2], alike[2])]
    assert covered[0] > covered[1]
    assert float(diverse[3]) > float(alike[3])  # distinct bigrams
    assert float(alike[4]) > float(diverse[4])  # paraphrases of the seed are closer to it


def test_compare_names_a_folder_that_is_not_a_run(tmp_path):
    fake_run(tmp_path / "ok", DIVERSE)
    result = germinate("compare", str(tmp_path / "ok"), str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path}: not a germinate run directory (no config.yaml)"]


def test_a_large_dataset_is_measured_on_a_sample_by_id_that_the_summary_states():
    """Embedding every row of a large set would take longer than growing it: the vector metrics
    read a sample of about SAMPLE rows, the same whatever the rows' order (a resumed run agrees),
    and the line the card and the summary print says how many rows it saw."""
    from germinate.metrics import SAMPLE, Metrics, sample
    from germinate.report import describe_metrics

    rows = [Record(id=f"row-{i}", instruction=f"task {i}") for i in range(10 * SAMPLE)]
    chosen = sample(rows)
    assert 0.8 * SAMPLE < len(chosen) < 1.2 * SAMPLE
    assert {r.id for r in sample(rows[::-1])} == {r.id for r in chosen}
    assert sample(rows[:SAMPLE]) == rows[:SAMPLE]  # a set this small is measured whole
    common = dict(generated=10 * SAMPLE, mean_distance=0.5, clusters_covered=3, clusters=4, distinct_bigrams=0.5,
                  seed_similarity=0.5)
    assert f"a sample of {len(chosen)} rows" in describe_metrics(
        Metrics(rows=len(rows), measured_on=len(chosen), **common))
    assert "sample" not in describe_metrics(Metrics(rows=100, measured_on=100, **common))


def test_what_the_metrics_will_sample_is_embedded_first_whatever_the_sets_size():
    """A run embeds its records while it goes on, in order of `sample_priority`: the records of each
    set (1,750 seeds, 3,500 rows) that its sample will take come before any that it will not, so at
    the end the metrics wait for the few made last, not for a backlog."""
    from germinate.metrics import sample, sample_priority

    seeds = [Record(id=f"seed-{i}", instruction=f"seed task {i}") for i in range(1750)]
    rows = [Record(id=f"row-{i}", instruction=f"task {i}") for i in range(3500)]
    order = sorted([(sample_priority(r, len(seeds)), r.id) for r in seeds] +
                   [(sample_priority(r, len(rows)), r.id) for r in rows])
    wanted = {r.id for r in sample(seeds) + sample(rows)}
    assert {record for _, record in order[: len(wanted)]} == wanted


def test_a_run_embeds_ahead_only_what_it_will_compare():
    """With no stage that compares every record's vector (semantic dedup, selection), a run embeds
    ahead the records its metrics will sample and few others: the rest would take the cores that
    generation needs. With such a stage, every record."""
    from germinate.metrics import sample, wanted_ahead

    rows = [Record(id=f"row-{i}", instruction=f"task {i}") for i in range(3500)]
    few = {text for _, text in wanted_ahead(rows, len(rows), every=False)}
    assert {show(r) for r in sample(rows)} <= few
    assert {show(r) for r in sample(rows[:2800])} <= few  # a set of 80% of the size planned for it
    assert len(few) < 1.5 * len(sample(rows))
    assert len(wanted_ahead(rows, len(rows), every=True)) == len(rows)
