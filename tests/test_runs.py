import pytest

from conftest import tiny_config
from germinate.budget import SEEDS, allocate, plan
from germinate.errors import UserError
from germinate.generators import strategies
from germinate.io import load_seeds
from germinate.runs import prepare_run
from germinate.stage import Context


def test_allocate_splits_evenly_and_exactly():
    assert allocate(10, 3) == [4, 3, 3]
    assert allocate(2, 4) == [1, 1, 0, 0]
    assert sum(allocate(1001, 7)) == 1001


def test_new_run_directory_appears_whole(make_config):
    config, run = prepare_run(make_config())
    assert run.root.name == config.run_id
    assert {p.name for p in run.root.iterdir()} == {"config.yaml", "seeds.parquet"}
    assert [s.id for s in run.seeds()] == ["s-sum", "s-apples", "s-haiku"]
    assert not list(run.root.parent.glob(".*"))  # no staging folder left behind


def test_resume_needs_the_same_settings(make_config):
    config, run = prepare_run(make_config(run_id="r1"))
    again, same = prepare_run(make_config(run_id="r1"))
    assert same.root == run.root
    with pytest.raises(UserError, match=r"run 'r1' was started with other settings \(aide.hops: 2 -> 3\)"):
        prepare_run(make_config(run_id="r1", aide__hops=3))


def test_a_folder_that_is_not_a_run_is_never_overwritten(make_config, tmp_path):
    folder = tmp_path / "runs" / "mine"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="exists but is not a germinate run"):
        prepare_run(make_config(run_id="mine"))
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_a_share_too_small_to_grow_anything_plans_no_shard(seeds_file, tmp_path):
    """The seeds that are rows take the whole budget: the strategies' shards are left out, not planned empty."""
    config = tiny_config(seeds_file, tmp_path, strategies={"evol-instruct": 0.99, "self-instruct": 0.01},
                         budget__max_llm_calls=2, quality__judge__enabled=False, include_seeds=True)
    planners = {name: strategies()[name](Context(config), 1) for name in config.strategies}
    work = plan(config, load_seeds(seeds_file), planners, lambda answered: 1 - answered)
    assert [w.source for w in work.shards] == [SEEDS]
    assert set(work.strategies) == {"evol-instruct", "self-instruct"}  # each share is still reported
