"""Benchmark decontamination in the gate: what shares a long run of words with a benchmark's prompt
or answer is dropped as `contaminated`, naming the item, and the card says what was checked."""

import json
import threading

import pyarrow.parquet as pq
import pytest

from conftest import GATE_OFF, germinate, tiny_config
from germinate.driver import check_run, run_here
from germinate.errors import UserError
from germinate.filters.decontaminate import Decontaminate, DecontaminateConfig, Index
from germinate.records import Record
from germinate.stage import Context
from servers import FaultyServer

SEEDS = [{"id": f"s{i}", "instruction": f"Explain to a curious {who} how {what} works, step by step, with one everyday "
                                         f"example and one common misunderstanding.", "output": "An answer."}
         for i, (who, what) in enumerate([("child", "a rainbow"), ("farmer", "a compass"), ("nurse", "a vaccine"),
                                          ("pilot", "a tide"), ("baker", "yeast")])]
PLANTED = ("Natalia sold clips to forty eight of her friends in April and then she sold half as many clips in May "
           "altogether")


class PlantingServer(FaultyServer):
    """Its first two answers to the respond stage carry a benchmark's question."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.planted = 0
        self.lock = threading.Lock()

    def _content(self, body, schema):
        content = super()._content(body, schema)
        if "Answer the user's task" in json.dumps(body["messages"]):
            with self.lock:
                self.planted += 1
                if self.planted <= 2:
                    return f"{content} {PLANTED}."
        return content


def test_a_run_drops_exactly_what_its_benchmark_holds(tmp_path):
    """A benchmark file (a `question` column) with verbatim copies of 3 seeds and a text the server
    plants in 2 answers: those 5 records, and no other, are dropped as `contaminated`, each naming its
    benchmark item; the other seeds stay; the report and the card name the benchmark and its 5 drops."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    bench = tmp_path / "bench.jsonl"
    questions = [SEEDS[0]["instruction"], "How many legs has a spider?", SEEDS[2]["instruction"], PLANTED,
                 SEEDS[4]["instruction"]]
    bench.write_text("".join(json.dumps({"question": q, "answer": "42"}) + "\n" for q in questions))
    with PlantingServer() as server:
        config = tiny_config(seeds, tmp_path / "runs", llm={"backend": "openai", "base_url": server.base_url},
                             aide__personas=0, include_seeds=True,
                             quality={**GATE_OFF, "decontaminate": {"benchmarks": [str(bench)], "drop_seeds": True}})
        report = run_here(config)
    run = tmp_path / "runs" / report.run_id
    dropped = pq.read_table(run / "stages" / "decontaminate").to_pylist()
    assert {r["drop_reason"] for r in dropped} == {"contaminated"}
    seeds_dropped = {r["id"]: r["drop_detail"] for r in dropped if r["strategy"] == "seed"}
    assert set(seeds_dropped) == {"s0", "s2", "s4"}
    assert seeds_dropped["s2"].endswith(f"with bench.jsonl: {bench}:3 (question)")
    planted = [r for r in dropped if r["strategy"] != "seed"]
    assert len(planted) == 2 and all(PLANTED in r["output"] for r in planted)
    assert all(r["drop_detail"].startswith("output shares 'natalia sold clips") and
               r["drop_detail"].endswith(f"with bench.jsonl: {bench}:4 (question)") for r in planted)
    rows = pq.read_table(report.dataset + "/data").to_pylist()
    assert {r["id"] for r in rows if r["strategy"] == "seed"} == {"s1", "s3"}
    assert rows and not any(PLANTED in (r["output"] or "") for r in rows)
    note = report.notes["decontaminate"]  # in report.json, the summary and the card
    assert note.startswith("Checked against benchmarks") and note.endswith("`bench.jsonl` 5.")
    card = (run / "dataset" / "README.md").read_text()
    assert note in card and "| decontaminate |" in card


def settings(**changes) -> DecontaminateConfig:
    return DecontaminateConfig(**changes)


def test_words_are_compared_as_the_settings_say(tmp_path):
    """Case and punctuation are ignored unless asked for; 12 shared words are not 13."""
    bench = tmp_path / "b.csv"
    bench.write_text("problem\n\"The quick brown fox jumps over the lazy dog, then naps in the warm sun all day.\"\n")
    loose = Index(settings(benchmarks=[str(bench)]))
    item, shared = loose.shared("Story: THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG THEN NAPS IN THE WARM SUN!")
    assert item.benchmark == "b.csv" and item.place == f"{bench}:2 (problem)"
    assert shared == "the quick brown fox jumps over the lazy dog then naps in the warm sun"  # all they share
    assert loose.shared("a quick brown fox jumps over the lazy dog then naps in the") is None  # 12 of its words
    strict = Index(settings(benchmarks=[str(bench)], case=True, punctuation=True))
    assert strict.shared("THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG THEN NAPS IN THE WARM SUN") is None
    assert strict.shared("so: The quick brown fox jumps over the lazy dog, then naps in the warm sun") is not None
    assert Index(settings(benchmarks=[str(bench)], ngram=8)).shared("brown fox jumps over the lazy dog then")


def test_a_seed_is_kept_unless_the_config_drops_it(tmp_path, seeds_file, caplog):
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"prompt": SEEDS[1]["instruction"]}) + "\n")
    seed = Record(id="s1", instruction=SEEDS[1]["instruction"], strategy="seed")
    for drop, verdict in ((False, None), (True, "contaminated")):
        config = tiny_config(seeds_file, tmp_path, quality={"decontaminate": {"benchmarks": [str(bench)],
                                                                              "drop_seeds": drop}})
        why = Decontaminate(Context(config)).check(seed)
        assert (why and why[0]) == verdict
    assert "seed s1 instruction shares" in caplog.text and "kept: quality.decontaminate.drop_seeds is off" in caplog.text


def test_benchmarks_named_for_a_stage_the_stages_leave_out_are_an_error(tmp_path, seeds_file):
    """A config of its own `stages` that names benchmarks but not the stage would check nothing."""
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"question": SEEDS[0]["instruction"]}) + "\n")
    config = tiny_config(seeds_file, tmp_path, stages=["respond", "judge"],
                         quality={"decontaminate": {"benchmarks": [str(bench)]}})
    with pytest.raises(UserError, match="quality.decontaminate: switches 'decontaminate' on, but stages does not"):
        check_run(config)


@pytest.mark.parametrize("benchmark, message", [
    ("missing.jsonl", "missing.jsonl: no such benchmark file"),
    ("cols.jsonl", "quality.decontaminate.benchmarks: cols.jsonl has none of the columns question, prompt"),
    ("no-such/benchmark", "quality.decontaminate.benchmarks: cannot load the Hugging Face dataset 'no-such/benchmark'"),
    ("short.csv", "quality.decontaminate.benchmarks: short.csv has no text of 13 words or more"),
    ("bench.tsv", "bench.tsv: unknown benchmark format '.tsv'"),
])
def test_a_bad_benchmark_is_one_clear_error_before_anything_is_written(tmp_path, benchmark, message):
    (tmp_path / "cols.jsonl").write_text(json.dumps({"id": 1, "label": "x"}) + "\n")
    (tmp_path / "short.csv").write_text("question,answer\nWhat is two and two?,four\n")
    (tmp_path / "bench.tsv").write_text("question\tanswer\n")
    (tmp_path / "run.yaml").write_text(json.dumps({"quality": {"decontaminate": {"benchmarks": [benchmark]}},
                                                   "output_dir": str(tmp_path / "runs")}))
    result = germinate("run", "--config", "run.yaml", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()
