"""Preference pairs from the judge: an answer it revised and scored higher is kept with the answer it
replaced, exported in TRL's preference format and read as the dataset's `preference` config."""

import json

from datasets import load_dataset

from conftest import GATE_OFF, germinate, tiny_config
from germinate.driver import run_here
from servers import FaultyServer
from test_pipeline import write_seeds

DRAFT = "A first draft"


class DraftingServer(FaultyServer):
    """First answers are drafts its judge scores 1 (`low_when`); revisions, which it scores 10, are not."""

    def __init__(self):
        super().__init__(low_when=DRAFT)

    def _content(self, body, schema):
        said = json.dumps(body["messages"])
        if schema is None and "Answer the user's task" in said:
            return f"{DRAFT}: {super()._content(body, schema)}"
        return super()._content(body, schema)


def test_revised_answers_are_exported_as_preference_pairs(tmp_path):
    """`germinate export RUN --format dpo` writes a pair for every answer the judge revised: the
    columns TRL's DPO trainer reads (prompt, chosen, rejected), the revision chosen over the draft it
    scored lower; the dataset folder has them as its `preference` config, and the card counts them."""
    with DraftingServer() as server:
        config = tiny_config(write_seeds(tmp_path), tmp_path / "runs", llm={"backend": "openai", "base_url": server.base_url},
                             aide__personas=0, budget={"max_llm_calls": 80, "max_records": 6},
                             quality={**GATE_OFF, "judge": {"enabled": True, "tries": 1}})
        report = run_here(config)
    assert report.preference_pairs > 0 and report.preference_gain == 9
    run = tmp_path / "runs" / report.run_id
    exported = germinate("export", str(run), "--format", "dpo", "--output", str(tmp_path / "pairs.jsonl"), cwd=tmp_path)
    assert exported.returncode == 0 and f"{report.preference_pairs} pairs in dpo format" in exported.stdout
    pairs = load_dataset("json", data_files=str(tmp_path / "pairs.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(pairs.column_names) and len(pairs) == report.preference_pairs
    for pair in pairs:
        assert pair["score_chosen"] > pair["score_rejected"] and pair["rejected"].startswith(DRAFT)
        assert not pair["chosen"].startswith(DRAFT) and pair["critique"]
    config_rows = load_dataset(report.dataset, "preference", split="train")
    assert sorted(config_rows["id"]) == sorted(pairs["id"])
    assert len(load_dataset(report.dataset, split="train")) == report.rows  # the default config: the rows
    assert f"Preference pairs: {report.preference_pairs} answers" in (run / "dataset" / "README.md").read_text()


class SamplingServer(FaultyServer):
    """An answer is a draft (its judge scores it 1) when its sampling seed is odd, a good answer (10)
    when it is even: the samples of one instruction differ as a real sampler's do."""

    def __init__(self):
        super().__init__(low_when=DRAFT)

    def _content(self, body, schema):
        if schema is None and "Answer the user's task" in json.dumps(body["messages"]) and body["seed"] % 2:
            return f"{DRAFT}: {super()._content(body, schema)}"
        return super()._content(body, schema)


def test_the_judge_keeps_the_best_of_the_answers_sampled_and_pairs_it_with_the_worst(tmp_path):
    """With `generation.samples: 2` every instruction is answered twice and both answers are judged;
    the row keeps the one scored best, and the worst, scored at least `margin` lower, is its pair's
    rejected answer, exported for TRL's DPO trainer."""
    with SamplingServer() as server:
        config = tiny_config(write_seeds(tmp_path), tmp_path / "runs", llm={"backend": "openai", "base_url": server.base_url},
                             aide__personas=0, budget={"max_llm_calls": 120, "max_records": 6},
                             generation={"response_max_tokens": 40, "samples": 2},
                             quality={**GATE_OFF, "judge": {"enabled": True, "tries": 0}})
        report = run_here(config)
    answers = [seeds for key, seeds in server.seeds.items() if len(seeds) > 1]
    assert answers and all(len(set(seeds)) == 2 for seeds in answers)  # two samples, each its own seed
    mixed = sum(len({seed % 2 for seed in seeds}) == 2 for seeds in answers)
    assert report.preference_pairs == mixed > 0 and report.preference_gain == 9
    run = tmp_path / "runs" / report.run_id
    exported = germinate("export", str(run), "--format", "dpo", "--output", str(tmp_path / "pairs.jsonl"), cwd=tmp_path)
    assert exported.returncode == 0
    pairs = load_dataset("json", data_files=str(tmp_path / "pairs.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(pairs.column_names) and len(pairs) == mixed
    for pair in pairs:
        assert pair["score_chosen"] > pair["score_rejected"] and pair["rejected"].startswith(DRAFT)
        assert not pair["chosen"].startswith(DRAFT)
    rows = load_dataset(report.dataset, split="train")
    assert set(rows["other_outputs"]) == {None}  # the judge chose among them
    drafts = sum(len({seed % 2 for seed in seeds}) == 1 and seeds[0] % 2 == 1 for seeds in answers)
    assert sum(output.startswith(DRAFT) for output in rows["output"]) == drafts  # only where both were drafts
