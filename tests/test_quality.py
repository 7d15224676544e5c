"""The quality gate's shared parts: the embedding cache, FAISS k-means (GPU path), the response judge."""

import asyncio
import sqlite3
import time

import numpy as np
import pytest

import germinate.embed
from conftest import make_stage
from germinate.embed import Embedder, embed
from germinate.filters.judge import Judge
from germinate.kmeans import gpus, spherical_kmeans
from germinate.llm import make_llm
from germinate.records import Record
from germinate.settings import EmbeddingConfig, LLMConfig
from servers import FaultyServer


def judged(llm, records, calls: int, **settings):
    """The judge as a shard uses it: a first look at each answer, then, with `calls` left, its last look."""
    judge = make_stage(Judge, llm, **settings)

    async def both():
        first, _ = await judge.run(records)
        return await judge.finish(first, calls)

    return llm.run(both())


def test_embeddings_are_cached_so_a_resumed_run_does_not_embed_twice(tmp_path):
    """Vectors go to the run's embeddings.sqlite; a new embedding process (a resumed run) reads them
    back instead of encoding again: a vector planted in the cache is what it returns."""
    cache = tmp_path / "embeddings.sqlite"
    first = embed(["sort a list", "sort a list"], cache=cache)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5) and np.array_equal(first[0], first[1])
    with sqlite3.connect(cache) as db:
        (sorting,) = [key for (key,) in db.execute("SELECT key FROM vectors")]
    baking = embed(["bake bread"], cache=cache)[0]
    planted = np.zeros(len(baking), dtype=np.float32)
    planted[0] = 1.0
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 2
        db.execute("UPDATE vectors SET vector = ? WHERE key != ?", (planted.tobytes(), sorting))
    for worker in germinate.embed._workers.values():  # as if this were the next process
        worker.process.kill()
        worker.process.wait()
    again = embed(["bake bread", "plan a trip", "sort a list"], cache=cache)
    np.testing.assert_array_equal(again[0], planted)
    np.testing.assert_array_equal(again[2], first[0])


def test_a_vector_depends_on_its_text_alone():
    """Embedded alone, in another company, or in another order, a text gets the very same vector:
    which texts a run happens to embed together never moves what dedup and k-means decide."""
    texts = [f"Write {n} short lines about the {thing}." for n, thing in
             [(3, "sea"), (12, "quiet winter mornings in a small town by the river"), (1, "moon"), (7, "coffee")]]
    texts += [f"Task {i}: " + "compare the two lists and explain the difference " * (i % 5) for i in range(20)]
    texts.append("Summarise this report: " + "the committee met again and discussed the budget " * 80)  # truncated
    together = embed(texts)  # more texts than a batch, of many lengths
    assert np.array_equal(embed(texts[::-1])[::-1], together)
    assert all(np.array_equal(embed([text])[0], vector) for text, vector in list(zip(texts, together))[::5])


def test_onnx_runtime_on_a_cpu_gives_the_vectors_torch_gives():
    """On a CPU the model runs in ONNX Runtime, from a graph exported from the very weights torch
    loads: the same tokens (truncated the same), the same vectors to float32's last digits."""
    texts = ["Plan a three-day trip to Kyoto on a small budget.", "", "Write a sonnet about a lost key.",
             "Summarise this report: " + "the committee met again and discussed the budget " * 80]
    config = EmbeddingConfig(precision="float32")
    runtimes = [germinate.embed._Onnx(config, "float32"), germinate.embed._Torch(config, "cpu", "float32")]
    onnx, torch = ([v for together in runtime.encode(texts) for _, vs in together for v in vs] for runtime in runtimes)
    assert runtimes[0]._tokens(texts) == runtimes[1]._tokens(texts)
    assert np.abs(np.array(onnx) - np.array(torch)).max() < 1e-5


def test_what_a_stage_waits_for_goes_ahead_of_the_background_work(tmp_path):
    """A run hands every record it makes to the worker, to embed in the background; a stage that then
    waits for vectors (AIDE's personas, the metrics) is answered between two batches, not after
    the backlog."""
    cache = tmp_path / "embeddings.sqlite"
    embedder = Embedder(EmbeddingConfig(), cache)
    embedder.vectors_sync(["the model is loaded"])
    backlog = [f"Background task number {i}: describe a {i % 7}-step plan for a garden." for i in range(3000)]
    embedder.submit(backlog)
    assert embedder.vectors_sync(["waited for"]).shape == (1, 384)
    with sqlite3.connect(cache) as db:
        done = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    assert done < len(backlog) // 2  # answered while most of the backlog still waited
    assert embedder.vectors_sync(backlog[-3:]).shape == (3, 384)


def test_a_run_that_makes_no_more_records_drops_its_background_work(tmp_path):
    """Once every shard is done, what is left of the background is nobody's: the worker drops it, and
    the whole-set stages and the metrics have every core to themselves."""
    cache = tmp_path / "embeddings.sqlite"
    embedder = Embedder(EmbeddingConfig(), cache)
    embedder.vectors_sync(["the model is loaded"])
    worker = germinate.embed._worker(embedder.config)
    embedder.submit([f"Background task number {i}: list {i % 9} uses of a brick." for i in range(3000)])
    embedder.forget_background()
    embedder.vectors_sync(["waited for"])
    assert germinate.embed._worker(embedder.config) is worker and worker.alive()  # the same process, still there

    def done() -> int:
        with sqlite3.connect(cache) as db:
            return db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    before = done()
    time.sleep(1.5)  # a worker still at the backlog would write a batch per core every few hundredths
    assert done() == before < 3000


def test_precision_is_a_choice_and_vectors_of_one_are_never_read_as_the_other(tmp_path):
    """float32 gives the same vectors on every machine; auto may compute in bfloat16 (where the
    hardware has it), within a hundredth of a cosine. The cache keeps the two apart."""
    cache = tmp_path / "embeddings.sqlite"
    texts = ["Plan a three-day trip to Kyoto on a small budget.", "Write a sonnet about a lost key."]
    exact = Embedder(EmbeddingConfig(precision="float32"), cache).vectors_sync(texts)
    default = Embedder(EmbeddingConfig(), cache).vectors_sync(texts)
    assert np.allclose(np.linalg.norm(default, axis=1), 1.0, atol=1e-5)
    assert (exact * default).sum(axis=1).min() > 0.99
    with sqlite3.connect(cache) as db:
        kinds = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    assert kinds == (2 if np.array_equal(exact, default) else 4)


def test_a_wait_given_up_leaves_the_embedder_working():
    """A shard that fails while it waits for vectors cancels the wait; later waits still get theirs."""
    embedder = Embedder(EmbeddingConfig())

    async def impatient():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(embedder.vectors([f"text {i}" for i in range(300)]), timeout=0.001)

    asyncio.run(impatient())
    assert embedder.vectors_sync(["still here"]).shape == (1, 384)


def test_waits_at_once_are_encoded_together_and_each_gets_its_own_vectors():
    """Many asks at once (as AIDE's seeds each ask for themselves and the same personas) share the
    worker's batches; each still gets its own texts' vectors, in its order."""
    embedder = Embedder(EmbeddingConfig())
    personas = [f"a {job} who plans a trip" for job in ("nurse", "chef", "pilot", "farmer", "judge")]
    asks = [[f"Seed task {i}: list {i} prime numbers.", *personas[i % 3 :]] for i in range(40)]

    async def at_once():
        return await asyncio.gather(*(embedder.vectors(texts) for texts in asks))

    for texts, vectors in zip(asks, asyncio.run(at_once())):
        np.testing.assert_array_equal(vectors, embed(texts))


def test_an_embeddings_server_can_stand_in_for_the_local_model():
    """embedding.base_url: an OpenAI-compatible /v1/embeddings server (here a loopback one) embeds
    instead of the local model; its vectors come back normalised, in the order asked."""
    with FaultyServer() as server:
        embedder = Embedder(EmbeddingConfig(model="bench-embedder", base_url=server.base_url, batch_size=2))
        vectors = embedder.vectors_sync(["a", "b", "c", "a"])
    assert server.embedded == [["a", "b"], ["c"]]  # in batches, each text once
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0) and np.array_equal(vectors[0], vectors[3])
    assert not np.allclose(vectors[0], vectors[1])


def test_an_embeddings_server_that_answers_short_is_an_error_not_a_wait():
    """A server that returns fewer vectors than it was sent texts: the wait fails with a line that
    names the server, instead of asking again forever."""
    with FaultyServer() as server:
        server.embeddings_short = True
        embedder = Embedder(EmbeddingConfig(model="short-embedder", base_url=server.base_url))
        with pytest.raises(RuntimeError, match="did not answer with an OpenAI-style embeddings list"):
            embedder.vectors_sync(["a", "b", "c"])
        assert len(server.embedded) == 1  # asked once


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
    calls = []
    try:
        kept, rejected = judged(llm, records, 2, quality__judge__threshold=10, quality__judge__on_fail="drop",
                                quality__judge__tries=1, generation__response_max_tokens=40)
    finally:
        calls = llm.cache._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        llm.close()
    assert {r.id for r in kept + rejected} == {"model", "user"}
    by_id = {r.id: r for r in kept + rejected}
    assert all(1 <= r.quality_score <= 10 and r.quality_critique is not None for r in by_id.values())
    assert by_id["user"].output == "Jupiter." and by_id["user"].quality_revisions == 0
    for record in rejected:
        assert record.drop_reason == "low_quality_score" and "< 10" in record.drop_detail
    if by_id["model"] in rejected:  # revised once, then judged again: both calls the shard had left
        assert by_id["model"].quality_revisions == 1 and calls == 2 + 2


@pytest.mark.parametrize("leaks", [False, True])
def test_a_revision_replaces_its_draft_only_if_it_passes_the_heuristics(leaks):
    """Revisions come after the heuristic filters: one that fails them (here: template leakage)
    leaves the draft in place. The server's judge gives the draft 1 and anything else 10."""
    draft = Record(id="r", instruction="Explain why the sky is blue.", output="Rayleigh scattering.", model="m")
    leakage = ["careful answer"] if leaks else []
    with FaultyServer(low_when=draft.output) as server:
        llm = make_llm(LLMConfig(backend="openai", base_url=server.base_url, cache=False), None)
        try:
            kept, _ = judged(llm, [draft], 5, quality__judge__threshold=5, quality__judge__tries=1,
                             quality__heuristics__leakage=leakage, quality__heuristics__min_words=1)
        finally:
            llm.close()
    (record,) = kept
    assert record.quality_revisions == 1
    assert (record.output == "Rayleigh scattering.") == leaks
    assert leaks or record.output.startswith("Here is a careful answer")


SHORT_ANSWERS = '''
"""Short answers: a package of its own whose whole filter is this file."""
from pydantic import Field

from germinate.settings import StageSettings
from germinate.stage import Filter


class ShortAnswersConfig(StageSettings):
    min_words: int = Field(3, ge=1, description="words an answer has at least")


class ShortAnswers(Filter):
    name = "short_answers"
    section = "quality.short_answers"
    Settings = ShortAnswersConfig

    def check(self, record):
        words = len((record.output or "").split())
        return ("short_answer", f"{words} words") if words < self.settings.min_words else None
'''


def test_a_filter_is_one_file_found_through_its_entry_point(tmp_path, seeds_file):
    """A package of its own (a folder on PYTHONPATH with its metadata) brings a filter's one file: its
    section is part of the config, and named in `stages` it runs in the stream, its drops kept with
    their reason in stages/short_answers/. Placed after a stage that compares the whole set, it is a
    clear error naming `stages`."""
    import pyarrow.parquet as pq

    from conftest import germinate

    plugin = tmp_path / "plugin"
    (plugin / "short_answers-0.1.dist-info").mkdir(parents=True)
    (plugin / "short_answers.py").write_text(SHORT_ANSWERS)
    (plugin / "short_answers-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: short-answers\nVersion: 0.1\n")
    (plugin / "short_answers-0.1.dist-info" / "entry_points.txt").write_text(
        "[germinate.stages]\nshort_answers = short_answers\n")
    stages = "[respond, short_answers, heuristics, exact_dedup]"
    config = tmp_path / "short.yaml"
    config.write_text(f"seeds: {seeds_file}\nstrategy: self-instruct\nstages: {stages}\n"
                      "quality: {short_answers: {min_words: 7}}\nbudget: {max_llm_calls: 24, max_records: 6}\n")
    env = {"PYTHONPATH": str(plugin)}
    bad = germinate("run", "-c", str(config), cwd=tmp_path)  # without the package: its section is unknown
    assert bad.returncode == 2 and "quality.short_answers" in bad.stderr
    with FaultyServer() as server:  # its answers: "Here is a careful answer (...)." (6 words)
        result = germinate("run", "-c", str(config), "--backend", "openai", "--base-url", server.base_url,
                           "--output-dir", str(tmp_path / "runs"), "--run-id", "short", "--allow-partial",
                           cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        dropped = pq.read_table(tmp_path / "runs" / "short" / "stages" / "short_answers").to_pylist()
        assert dropped and all(r["drop_reason"] == "short_answer" and r["drop_detail"] == "6 words"
                               for r in dropped)
        assert "short_answers" in (tmp_path / "runs" / "short" / "dataset" / "README.md").read_text()
        config.write_text(config.read_text().replace(stages, "[respond, semantic_dedup, short_answers]"))
        late = germinate("run", "-c", str(config), "--backend", "openai", "--base-url", server.base_url,
                         "--output-dir", str(tmp_path / "runs"), cwd=tmp_path, env=env)
    assert late.returncode == 2 and "stages: 'short_answers' works record by record" in late.stderr
