"""The expansion strategies: TCIA's search and GLAN's concept sampling without an LLM, the
taxonomy's schema, and every strategy end to end on the embedded model (tiny settings)."""

import random
from math import comb
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import GATE_OFF, TINY_SEEDS, germinate, tiny_config
from germinate.runs import Run
from germinate.cli import app
from germinate.config import DEFAULT_STAGES
from germinate.driver import run_here
from germinate.generators import strategies
from germinate.generators.glan import concept_sets, sample_concepts
from germinate.generators.self_instruct import rouge_l, tokens
from germinate.generators.tcia import Constraint, Pool, load_library, search
from germinate.settings import DATA_DIR
from germinate.taxonomy import DEFAULT, disciplines, load_taxonomy
from servers import FaultyServer

runner = CliRunner()


def planted_pool(size: int = 12) -> Pool:
    """Constraints in pairs of near-twins: each one's most similar other is its twin."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(size // 2, 16))
    vectors = np.repeat(base, 2, axis=0) + 0.05 * rng.normal(size=(size, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Pool([Constraint("format", f"rule {i}") for i in range(size)], vectors @ vectors.T)


def test_tcia_search_is_breadth_first_unique_capped_and_each_move_does_what_it_says():
    pool = planted_pool()
    start = frozenset({0, 2})
    states = search(start, pool, states=15, moves=2, max_constraints=4, rng=random.Random(1))
    sets = [s.constraints for s in states]
    assert len(sets) == len(set(sets)) == 14 and start not in sets  # K unique sets, the seed's own included
    assert [s.depth for s in states] == sorted(s.depth for s in states)  # breadth first
    assert max(len(s) for s in sets) <= 4
    for state in states:
        added, removed = state.constraints - state.parent, state.parent - state.constraints
        if state.move == "add":
            assert len(added) == 1 and not removed
        elif state.move == "remove":
            assert len(removed) == 1 and not added
        else:
            (old,), (new,) = removed, added
            assert new == old ^ 1  # its planted twin: the most similar constraint not in the set
    assert {s.move for s in states} == {"add", "remove", "replace"}


def test_constraint_library_covers_every_task_type_and_category():
    library = load_library(DATA_DIR / "constraints.yaml")
    assert sum(len(c) for c in library.values()) >= 300
    for constraints in library.values():
        assert {c.category for c in constraints} == {
            "content", "numerical", "style_tone", "format", "language", "input_placeholder"}


def test_glan_concept_sets_match_the_combinations():
    sessions = [["a", "b", "c", "d"], ["e", "f", "g"], ["h", "i"]]
    assert len(concept_sets(sessions, (0,))) == sum(comb(4, n) for n in range(1, 5))
    # 2-5 of the 7 concepts of sessions 0 and 1, at least one from each
    spanning = concept_sets(sessions, (0, 1))
    assert len(spanning) == sum(comb(7, n) - comb(4, n) - comb(3, n) for n in range(2, 6))
    assert all(set(c) & {"a", "b", "c", "d"} and set(c) & {"e", "f", "g"} for c in spanning)
    every = sample_concepts(sessions, 10_000, random.Random(0))
    total = sum(len(concept_sets(sessions, chosen)) for chosen in [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)])
    assert len(every) == len(set(every)) == total
    draws = sample_concepts(sessions, 40, random.Random(3))
    for chosen, concepts in draws:
        assert 1 <= len(concepts) <= 5
        for index in chosen:  # a draw takes concepts from each session it names
            assert set(concepts) & set(sessions[index])
    assert {len(chosen) for chosen, _ in draws} == {1, 2}  # both kinds are drawn


def test_shipped_taxonomy_passes_its_schema_check():
    taxonomy = load_taxonomy(DEFAULT)
    names = disciplines(taxonomy)
    assert len(names) >= 100 and len({d.name for d in names}) == len(names)
    assert len(taxonomy.fields) >= 8
    result = runner.invoke(app, ["taxonomy", "check", str(DEFAULT)])
    assert result.exit_code == 0 and f"{len(names)} disciplines" in result.output


def test_malformed_taxonomy_is_one_clear_error(tmp_path, seeds_file):
    bad = tmp_path / "taxonomy.yaml"
    bad.write_text("fields:\n- name: Sciences\n  sub_fields:\n  - name: Physics\n    disciplines: []\n")
    result = runner.invoke(app, ["taxonomy", "check", str(bad)])
    assert result.exit_code == 2
    assert "taxonomy.yaml: 'fields.0.sub_fields.0.disciplines': List should have at least 1 item" in result.output
    config = tmp_path / "glan.yaml"
    config.write_text(f"strategy: glan\nglan:\n  taxonomy: {bad}\noutput_dir: {tmp_path / 'runs'}\n")
    result = runner.invoke(app, ["run", "--config", str(config), "--seeds", str(seeds_file)])
    assert result.exit_code == 2 and "taxonomy.yaml" in result.output
    assert not (tmp_path / "runs").exists()  # nothing half-written
    config.write_text(f"strategy: glan\nglan:\n  fields: [Astrology]\noutput_dir: {tmp_path / 'runs'}\n")
    result = runner.invoke(app, ["run", "--config", str(config), "--seeds", str(seeds_file)])
    assert result.exit_code == 2 and "glan.fields: 'Astrology' is not in" in result.output


def test_rouge_l_is_the_lcs_f_measure():
    assert rouge_l(tokens("the cat sat on the mat"), tokens("The cat sat on the mat!")) == 1.0
    # LCS "the cat on the mat" = 5 of 6 and 5 of 5 tokens
    assert rouge_l(tokens("the cat sat on the mat"), tokens("the cat on the mat")) == pytest.approx(2 * 5 / 11)
    assert rouge_l(tokens("alpha beta"), tokens("gamma delta")) == 0.0


TINY = {
    "tcia": {"tcia__states": 6, "tcia__samples": 1, "tcia__refine_tries": 1},
    "glan": {"glan__disciplines": ["Classical Mechanics", "Baking"], "glan__subjects": 1,
             "glan__sessions": 2, "glan__questions": 2},
    "self-instruct": {"self_instruct__batch": 3, "budget__max_llm_calls": 16},
    "evol-instruct": {"evol_instruct__generations": 2},
}


@pytest.fixture(scope="module")
def strategy_runs(tmp_path_factory):
    """Each strategy once, on the embedded model with the gate off: provenance is what is checked, on
    the rows and on the candidates the strategy itself dropped (a 135M model's TCIA candidates often
    fail its own constraint check: which ones depends on the sampled text)."""
    import json

    from conftest import tiny_config

    folder = tmp_path_factory.mktemp("strategies")
    seeds = folder / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in TINY_SEEDS))
    cache = {}

    def run(name: str):
        if name not in cache:
            settings = {"budget__max_llm_calls": 30, "budget__max_records": 10, "budget__allow_partial": True,
                        **TINY[name]}
            config = tiny_config(seeds, folder / "runs", quality=GATE_OFF, strategies={name: 1.0}, **settings)
            report = run_here(config)
            rows = pq.read_table(Path(report.dataset) / "data").to_pylist()
            expand = Path(report.dataset).parent / "stages" / "expand"
            dropped = [r for f in sorted(expand.glob("rejected-*.parquet")) for r in pq.read_table(f).to_pylist()]
            cache[name] = report, rows, dropped
        return cache[name]

    return run


def generated(rows, strategy):
    found = [r for r in rows if r["strategy"] == strategy]
    assert found, f"{strategy} made no rows"
    return found


def test_tcia_rows_carry_their_query_and_constraints(strategy_runs):
    report, rows, dropped = strategy_runs("tcia")
    assert report.llm_calls <= 30 and report.rows <= 10
    queries = {}
    for row in generated(rows + dropped, "tcia"):
        assert row["task_type"] and row["basic_query"] and row["hop"] >= 1
        assert row["operation"] in ("add", "remove", "replace") and row["parent_id"] == row["seed_id"]
        assert isinstance(row["constraints"], list)
        assert all(c.split(": ", 1)[0] in ("content", "numerical", "style_tone", "format", "language",
                                           "input_placeholder") for c in row["constraints"])
        queries.setdefault(row["seed_id"], set()).add(row["basic_query"])
    assert all(len(q) == 1 for q in queries.values())  # the basic query never changes within a seed


def test_glan_rows_carry_their_place_in_the_taxonomy(strategy_runs):
    report, rows, _ = strategy_runs("glan")
    for row in generated(rows, "glan"):
        assert row["discipline"] in ("Classical Mechanics", "Baking")
        assert row["field"] and row["subject"] and row["seed_id"] is None
        assert 1 <= len(row["sessions"]) <= 2 and 1 <= len(row["concepts"]) <= 5


def test_self_instruct_rows_are_novel_against_the_pool(strategy_runs):
    report, rows, _ = strategy_runs("self-instruct")
    new = generated(rows, "self-instruct")
    for i, row in enumerate(new):
        for other in new[:i] + TINY_SEEDS:
            assert rouge_l(tokens(row["instruction"]), tokens(other["instruction"])) < 0.7


def test_evol_instruct_rows_form_chains_from_their_seed(strategy_runs):
    report, rows, _ = strategy_runs("evol-instruct")
    by_id = {r["id"]: {**r, "hop": 0, "seed_id": None} for r in TINY_SEEDS} | {r["id"]: r for r in rows}
    for row in generated(rows, "evol-instruct"):
        assert row["operation"] in ("add_constraints", "deepen", "concretize", "increase_reasoning",
                                    "complicate_input", "breadth")
        assert row["output"] and row["hop"] >= 1
        parent = by_id[row["parent_id"]]  # a failed step evolves its parent again: only kept rows are parents
        assert parent["hop"] == row["hop"] - 1 and row["seed_id"] == (parent["seed_id"] or parent["id"])


def test_mixed_run_respects_the_shares_of_the_budget(tmp_path, seeds_file):
    from conftest import tiny_config

    shares = {"aide": 0.5, "tcia": 0.3, "glan": 0.2}
    config = tiny_config(seeds_file, tmp_path / "runs", quality=GATE_OFF, strategies=shares,
                         budget__max_llm_calls=60, budget__max_records=14, **TINY["tcia"], **TINY["glan"])
    report = run_here(config)
    split = report.strategies
    assert sum(s.max_llm_calls for s in split.values()) == 60  # the seeds are not rows: nothing reserved for them
    rows = pq.read_table(Path(report.dataset) / "data").to_pylist()
    for name, share in shares.items():
        part = split[name]
        assert abs(part.max_llm_calls - share * 60) < 1
        # what the strategy spent expanding, and the answers it reserved for its records, fit its share
        assert part.expand_calls + part.records <= part.max_llm_calls
        assert part.expand_calls >= 1 and part.records <= part.max_records  # each grew from its share
        assert len([r for r in rows if r["strategy"] == name]) == part.records
    assert report.llm_calls <= 60


def test_a_prompt_template_may_name_its_own_seed():
    """AIDE's rewrite prompt fills $seed with the seed task; the request's random seed stays apart from it."""
    from germinate.config import RunConfig
    from germinate.generators.aide import AIDE, REWRITE
    from germinate.stage import Context

    request = AIDE(Context(RunConfig()), 1)._request(REWRITE, 2, seed="Sum a list of numbers.", draft="d", critique="c")
    assert "Sum a list of numbers." in request.messages[-1]["content"] and request.seed == 2


RESTATE = '''
"""A strategy of a package of its own: the whole of it is this file."""
from pydantic import Field

from germinate.generators import STAGE, Strategy, fault
from germinate.prompts import Prompt
from germinate.records import record_id
from germinate.settings import Section

PROMPT = Prompt("Say this task again in other words, in a $tone tone:\\n$task")


class RestateConfig(Section):
    tone: str = Field("plain", description="the tone of the rewording")


class Restate(Strategy):
    """Restate: each seed said again in other words."""
    name = "restate"
    section = "restate"
    Settings = RestateConfig
    prompts_hash = PROMPT.hash

    def __init__(self, context, record_cost):
        super().__init__(context, record_cost)
        self.unit_cost = 1 + record_cost

    async def grow(self, seed, allowance, emit):
        if allowance.records < 1 or allowance.calls < self.unit_cost:
            return
        request = self.request(PROMPT, self.random_seed, task=seed.instruction, tone=self.settings.tone)
        [result] = await self.llm.generate([request])
        record = self.written(result, id=record_id(seed.id, "restate"), seed_id=seed.id, parent_id=seed.id, hop=1)
        verdict = fault(record, result)
        if verdict:
            emit([], [record.dropped(STAGE, *verdict)])
        else:
            emit([record], [])
'''


def test_a_strategy_is_one_file_found_through_its_entry_point(tmp_path, seeds_file):
    """A package of its own (here a folder on PYTHONPATH with its metadata) brings the strategy's one file;
    germinate finds it, its section is part of the config, and a run uses it."""
    plugin = tmp_path / "plugin"
    (plugin / "restate-0.1.dist-info").mkdir(parents=True)
    (plugin / "restate.py").write_text(RESTATE)
    (plugin / "restate-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: restate\nVersion: 0.1\n")
    (plugin / "restate-0.1.dist-info" / "entry_points.txt").write_text(
        "[germinate.strategies]\nrestate = restate\nbroken = no_such_module\nagain = restate:Restate\n"
    )
    config = tmp_path / "restate.yaml"
    config.write_text(f"seeds: {seeds_file}\nstrategy: restate\nrestate:\n  tone: formal\n"
                      "budget: {max_llm_calls: 12, max_records: 6}\n")
    env = {"PYTHONPATH": str(plugin)}
    helped = germinate("run", "--help", cwd=tmp_path, env=env)
    assert helped.returncode == 0 and "restate" in helped.stdout  # a broken or clashing entry point is left out:
    assert "'broken' (no_such_module) does not load" in helped.stderr  # every command still works
    assert "strategy 'restate' from entry point 'again' left out" in helped.stderr
    bad = germinate("run", "-c", str(config), cwd=tmp_path)  # without the package: an unknown strategy
    assert bad.returncode == 2 and "'strategies.restate'" in bad.stderr and "unknown key 'restate'" not in bad.stderr
    with FaultyServer() as server:
        result = germinate("run", "-c", str(config), "--backend", "openai", "--base-url", server.base_url,
                           "--output-dir", str(tmp_path / "runs"), "--run-id", "restated", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    dataset = tmp_path / "runs" / "restated" / "dataset"
    rows = pq.read_table(dataset / "data").to_pylist()
    restated = [row for row in rows if row["strategy"] == "restate"]
    assert restated and all(row["parent_id"] == row["seed_id"] for row in restated)
    assert "tone: formal" in (dataset / "README.md").read_text()


def test_aide_spends_what_dropped_children_give_back(make_config):
    """A child the judge drops early gives back its calls: the hop writes its node's next child with
    them, so a seed whose first child fails still grows its tree to the configured depth (each
    seed's share here buys one child per hop). The loopback server judges every persona child
    low: only the attribute child of each node can survive."""
    with FaultyServer(low_when="clearly different from its parent task") as server:
        config = make_config(llm={"backend": "openai", "base_url": server.base_url},
                             aide__personas=2, aide__reflection_tries=0, quality=GATE_OFF,
                             budget__max_llm_calls=42, budget__max_records=6)
        run = Run(Path(run_here(config).dataset).parent)
    kept = run.kept("expand")
    assert {(r.seed_id, r.hop) for r in kept} == {(s["id"], hop) for s in TINY_SEEDS for hop in (1, 2)}
    assert all(r.operation == "concretizing" for r in kept)
    assert run.rejected("expand") and all(r.operation == "persona" for r in run.rejected("expand"))


UNANSWERED = [stage for stage in DEFAULT_STAGES if stage != "respond"]


@pytest.mark.parametrize("name", sorted(strategies()))
def test_every_strategy_stays_within_small_budgets(name, seeds_file, tmp_path):
    """Each strategy at budgets from one LLM call up, with the judge on and off (and once without the
    respond stage: a strategy may answer on its own), against a loopback
    server: each run finishes (the executor refuses a request or a row past a unit's allowance, so
    a strategy that counted wrong would fail it) within its budget, and a budget that affords a unit
    is spent on one."""
    own = {key: value for key, value in TINY.get(name, {}).items() if not key.startswith("budget")}
    with FaultyServer() as server:
        every = DEFAULT_STAGES
        for calls, rows, judged, stages in [(1, 1, False, every), (3, 1, True, every), (7, 2, True, every),
                                            (20, 4, False, every), (40, 6, True, every), (12, 6, True, UNANSWERED)]:
            config = tiny_config(seeds_file, tmp_path / f"{calls}", strategies={name: 1.0},
                                 llm={"backend": "openai", "base_url": server.base_url},
                                 quality={**GATE_OFF, "judge": {"enabled": judged}}, stages=stages,
                                 budget={"max_llm_calls": calls, "max_records": rows, "allow_partial": True}, **own)
            report = run_here(config)
            assert report.llm_calls <= calls and report.rows <= rows, (calls, rows, judged)
            if calls >= 7:  # enough for a unit of each: spent (what it made may still fail its own checks)
                assert report.strategies[name].expand_calls >= 1, (calls, rows, judged)
