"""`germinate run --dry-run`: what a run will ask of its model, said before it asks."""

import json
import re

import yaml
from datasets import load_dataset

from conftest import germinate, tiny_config
from germinate.driver import run_here
from germinate.forecast import PROBE_REQUESTS, kept_at, kept_forecast
from germinate.runs import Run
from servers import WritingServer
from test_pipeline import write_seeds


def test_the_dry_run_forecasts_the_llm_calls_the_run_then_makes(tmp_path):
    """The forecast counts, sending no generation request (only the probe of the server's rate) and
    writing no run; the run then makes as many calls, within 10%, and the price gives the cost."""
    with WritingServer() as server:
        config = tiny_config(write_seeds(tmp_path), tmp_path / "runs", llm={"backend": "openai", "base_url": server.base_url},
                             strategies={"self-instruct": 0.5, "tcia": 0.5},
                             budget={"max_llm_calls": 120, "max_records": 10, "price": [1.0, 2.0]})
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(json.loads(config.model_dump_json(exclude_unset=True))))
        dry = germinate("run", "--dry-run", "--config", str(tmp_path / "run.yaml"), cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert server.requests <= PROBE_REQUESTS + 1  # the probe and the ping before it
        assert [path.name for path in (tmp_path / "runs").iterdir()] == [".forecasts"]  # no run
        forecast = int(re.search(r"(\d+) LLM calls", dry.stdout).group(1))
        assert re.search(r"by stage: expand \d+, respond \d+, judge \d+", dry.stdout)
        assert re.search(r"completion tokens/s \(measured with \d+ requests in flight\)", dry.stdout)
        assert re.search(r"for about \$\d+\.\d\d at budget.price", dry.stdout)
        report = run_here(config)
    assert abs(forecast - report.llm_calls) <= 0.1 * report.llm_calls
    assert report.forecast.llm_calls == forecast and report.cost is not None  # the report sets them side by side


def test_the_dry_run_of_an_unreachable_server_says_so(tmp_path):
    dry = germinate("run", "--dry-run", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", cwd=tmp_path)
    assert dry.returncode == 2 and "127.0.0.1:9" in dry.stderr and "Traceback" not in dry.stderr


class CountingServer(WritingServer):
    """Reports the tokens it read and wrote (4 characters a token), as a real server does."""

    def _usage(self, body, content):
        prompt = sum(len(m["content"]) for m in body["messages"]) // 4
        return {"prompt_tokens": prompt, "completion_tokens": len(content) // 4, "total_tokens": prompt + len(content) // 4}


def test_a_run_ends_at_its_token_cap_with_its_dataset_written(tmp_path):
    """budget.max_tokens: the run never passes it (as the server counts), writes what it made, and its
    report says the cap ended it; what it did not send is kept as dropped, with the cap named."""
    seeds = write_seeds(tmp_path)
    with CountingServer() as server:
        def config(run_id, **budget):
            return tiny_config(seeds, tmp_path / "runs", llm={"backend": "openai", "base_url": server.base_url},
                               run_id=run_id, budget={"max_llm_calls": 80, "max_records": 8, **budget})

        free = run_here(config("free", price=[1.0, 2.0]))
        spent = free.prompt_tokens + free.completion_tokens
        capped = run_here(config("capped", max_tokens=spent // 2))
        written = len(load_dataset(capped.dataset, split="train"))
        held_back = [r for stage in [s.stage for s in capped.stages] for r in Run(tmp_path / "runs" / "capped").rejected(stage)
                     if "over_budget: sending it would pass budget.max_tokens" in (r.drop_detail or "")]
        went_on = run_here(config("capped", max_tokens=spent * 2))  # the same run, with room to finish
    assert free.status == "complete" and free.cost == (free.prompt_tokens + 2 * free.completion_tokens) / 1e6
    assert 0 < capped.prompt_tokens + capped.completion_tokens <= spent // 2
    assert capped.status == "partial" and "budget.max_tokens" in capped.problem and "raise it" in capped.problem
    assert capped.rows > 0 and capped.llm_calls < free.llm_calls
    assert written == capped.rows
    assert held_back
    # What was answered before the cap came from the cache, and the run reports the tokens an uncapped run does
    assert went_on.status == "complete" and sum(s.cached_calls for s in went_on.stages) > 0
    assert went_on.prompt_tokens + went_on.completion_tokens == spent
    rows = {name: sorted(load_dataset(str(tmp_path / "runs" / name / "dataset"), split="train")["output"])
            for name in ("free", "capped")}
    assert rows["capped"] == rows["free"]


def test_a_kept_forecast_this_version_cannot_read_is_left_out(tmp_path):
    """A forecast written by another version, or cut short, is no reason for a run to fail at its end."""
    config = tiny_config(write_seeds(tmp_path), tmp_path / "runs")
    kept_at(config).parent.mkdir(parents=True)
    kept_at(config).write_text('{"llm_calls": 3}')
    assert kept_forecast(config) is None
