"""The quality gate's shared parts: the embedding cache, FAISS k-means (GPU path), the response judge."""

import numpy as np
import pytest

import germinate.embed
from filters.heuristics import Heuristics
from filters.reflection import judge_responses
from germinate.budget import Allowance
from germinate.config import GenerationConfig, HeuristicsConfig, LLMConfig, ResponseReflectionConfig
from germinate.embed import embed
from germinate.kmeans import gpus, spherical_kmeans
from germinate.llm import make_llm
from germinate.records import Record
from servers import FaultyServer


def test_embeddings_are_cached_so_a_resumed_run_does_not_embed_twice(tmp_path, monkeypatch):
    cache = tmp_path / "embeddings.sqlite"
    first = embed(["sort a list", "bake bread", "sort a list"], cache=cache)
    encoded = []
    real_encode = germinate.embed._encode
    monkeypatch.setattr(germinate.embed, "_encode", lambda texts, *a: encoded.extend(texts) or real_encode(texts, *a))
    again = embed(["bake bread", "plan a trip", "sort a list"], cache=cache)
    assert encoded == ["plan a trip"]
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[2], first[0])
    assert np.allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-5)


def clustered(n: int, k: int, d: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(k, size=n)
    vectors = rng.normal(size=(k, d))[labels] + rng.normal(scale=0.3, size=(n, d))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def test_spherical_kmeans_finds_planted_clusters():
    vectors, labels = clustered(2000, 10)
    found = spherical_kmeans(vectors, 10)
    purity = [np.bincount(labels[m]).max() / len(m) for m in found.members()]
    assert sum(p > 0.95 for p in purity) >= 8  # k-means may merge a pair, not scramble them
    assert np.allclose(np.linalg.norm(found.centroids, axis=1), 1.0, atol=1e-4)
    assert np.allclose(found.similarities, np.sum(vectors * found.centroids[found.assignments], axis=1), atol=1e-4)


@pytest.mark.skipif(gpus() == 0, reason="needs a GPU and a GPU build of FAISS (the gpu extra)")
def test_gpu_kmeans_matches_the_cpu_objective(monkeypatch):
    vectors, _ = clustered(20000, 50)
    on_gpu = spherical_kmeans(vectors, 50).objective
    monkeypatch.setattr("germinate.kmeans.gpus", lambda: 0)
    on_cpu = spherical_kmeans(vectors, 50).objective
    assert abs(on_gpu - on_cpu) < 0.01


def test_response_judge_scores_every_answer_and_never_rewrites_the_users(tmp_path):
    """The embedded model judges; with threshold 10 and on_fail drop, what it scores lower is
    dropped with the score and critique, after one revision of the model-written answer."""
    llm = make_llm(LLMConfig(), tmp_path / "cache.sqlite")
    records = [
        Record(id="model", instruction="What is 12 times 12?", output="12 times 12 is 144.", model="m"),
        Record(id="user", instruction="Name the largest planet.", output="Jupiter."),
    ]
    config = ResponseReflectionConfig(threshold=10, on_fail="drop", tries=1)
    budget = Allowance(calls=2, records=0)
    try:
        kept, rejected = llm.run(
            judge_responses(llm, records, config, GenerationConfig(response_max_tokens=40), budget.take,
                            acceptable=lambda r: True))
    finally:
        llm.close()
    assert {r.id for r in kept + rejected} == {"model", "user"}
    by_id = {r.id: r for r in kept + rejected}
    assert all(1 <= r.quality_score <= 10 and r.quality_critique is not None for r in by_id.values())
    assert by_id["user"].output == "Jupiter." and by_id["user"].quality_revisions == 0
    for record in rejected:
        assert record.drop_reason == "low_quality_score" and "< 10" in record.drop_detail
    if by_id["model"] in rejected:
        assert by_id["model"].quality_revisions == 1 and budget.calls == 0  # revised once, then judged


@pytest.mark.parametrize("leaks", [False, True])
def test_a_revision_replaces_its_draft_only_if_it_passes_the_heuristics(leaks):
    """Revisions come after the heuristic filters: one that fails them (here: template leakage)
    leaves the draft in place. The server's judge gives the draft 1 and anything else 10."""
    draft = Record(id="r", instruction="Explain why the sky is blue.", output="Rayleigh scattering.", model="m")
    leakage = ["careful answer"] if leaks else []
    checks = Heuristics(HeuristicsConfig(leakage=leakage, min_words=1))
    with FaultyServer(low_when=draft.output) as server:
        llm = make_llm(LLMConfig(backend="openai", base_url=server.base_url, cache=False), None)
        try:
            kept, _ = llm.run(judge_responses(
                llm, [draft], ResponseReflectionConfig(threshold=5, tries=1), GenerationConfig(),
                Allowance(calls=5, records=0).take, acceptable=lambda r: checks.check(r) is None,
            ))
        finally:
            llm.close()
    (record,) = kept
    assert record.quality_revisions == 1
    assert (record.output == "Rayleigh scattering.") == leaks
    assert leaks or record.output.startswith("Here is a careful answer")
