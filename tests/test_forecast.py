"""`germinate run --dry-run`: what a run will ask of its model, said before it asks."""

import json
import re

import yaml

from conftest import germinate, tiny_config
from germinate.driver import run_here
from germinate.forecast import PROBE_REQUESTS
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
        assert not (tmp_path / "runs").exists()
        forecast = int(re.search(r"(\d+) LLM calls", dry.stdout).group(1))
        assert re.search(r"by stage: expand \d+, respond \d+, judge \d+", dry.stdout)
        assert re.search(r"completion tokens/s \(measured with \d+ requests in flight\)", dry.stdout)
        assert re.search(r"for about \$\d+\.\d\d at budget.price", dry.stdout)
        report = run_here(config)
    assert abs(forecast - report.llm_calls) <= 0.1 * report.llm_calls


def test_the_dry_run_of_an_unreachable_server_says_so(tmp_path):
    dry = germinate("run", "--dry-run", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", cwd=tmp_path)
    assert dry.returncode == 2 and "127.0.0.1:9" in dry.stderr and "Traceback" not in dry.stderr
