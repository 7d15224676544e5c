"""The command line as a user meets it: bad input ends with one line, exit code 2, nothing written."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import DATA, germinate
from servers import FaultyServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_documents_every_option(tmp_path):
    result = germinate("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for option in ("--config", "--seeds", "--strategy", "--hops", "--max-records", "--backend", "--model",
                   "--base-url", "--run-id", "--max-llm-calls", "--concurrency"):
        assert option in result.stdout


CASES = {
    "broken line": (["--seeds", str(DATA / "bad.jsonl")], "bad.jsonl:7: invalid JSON"),
    "missing seeds": (["--seeds", "nope.jsonl"], "nope.jsonl: no such seed file"),
    "empty seeds": (["--seeds", "{tmp}/empty.jsonl"], "empty.jsonl: no seeds in the file"),
    "no instruction": (["--seeds", "{tmp}/noinstr.jsonl"], "noinstr.jsonl:1: seed has no 'instruction'"),
    "not utf-8": (["--seeds", "{tmp}/latin1.jsonl"], "latin1.jsonl:1: not UTF-8"),
    "unknown config key": (["--config", "{tmp}/typo.yaml"], "unknown key 'aide.hopz'"),
    "cost cap without a price": (["--config", "{tmp}/cost.yaml"], "budget.max_cost needs budget.price"),
    "unreachable server": (["--backend", "openai", "--base-url", "http://127.0.0.1:{port}/v1"], "llm.base_url: cannot reach"),
    "bad backend": (["--backend", "gpt"], "--backend gpt: Input should be 'transformers', 'openai', 'vllm' or 'stand_in'"),
    # A bad flag is blamed on the flag, not on the config file that says otherwise.
    "bad flag beside a good file": (["--config", "{tmp}/ok.yaml", "--concurrency", "0"],
                                    "--concurrency 0: Input should be greater than or equal to 1"),
    "bad strategy": (["--strategy", "evol"], "--strategy evol: Input should be 'aide'"),
    "bad run id": (["--run-id", "my run"], "--run-id my run: String should match pattern"),
    "bad budget": (["--max-llm-calls", "0"], "--max-llm-calls 0: Input should be greater than or equal to 1"),
    "not a number": (["--hops", "abc"], "Invalid value for '--hops'"),
    "bad strategy flag": (["--hops", "0"], "--hops 0: Input should be greater than or equal to 1"),  # AIDE's own
    "seeds are a folder": (["--seeds", "{tmp}"], "is a directory; name a seed file"),
    "seeds are a link loop": (["--seeds", "{tmp}/loop"], "loop: a loop of symbolic links, not a seed file"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "noinstr.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "latin1.jsonl").write_bytes(b'{"instruction": "caf\xe9"}\n')
    (tmp_path / "typo.yaml").write_text("aide:\n  hopz: 2\n")
    (tmp_path / "ok.yaml").write_text("llm:\n  concurrency: 8\n")
    (tmp_path / "cost.yaml").write_text("budget:\n  max_cost: 5\n")
    os.symlink(tmp_path / "loop", tmp_path / "loop2")
    os.symlink(tmp_path / "loop2", tmp_path / "loop")
    args, message = CASES[case]
    args = [a.format(tmp=tmp_path, port=free_port()) for a in args]
    result = germinate("run", *args, "--output-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()  # no half-written run directory


@pytest.mark.parametrize("status", [401, 501])
def test_a_server_that_lists_models_but_refuses_chat_stops_the_run_before_it_starts(tmp_path, status):
    """Its models list answers, its chat endpoint refuses (a wrong key, no chat): found by one tiny
    request before anything is written, not by a run that ends with 0 rows and exit code 0."""
    with FaultyServer(chat_status=status) as server:
        result = germinate("run", "--backend", "openai", "--base-url", server.base_url,
                           "--output-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"{server.base_url}/chat/completions answered HTTP {status} (not for you)" in line
    assert not (tmp_path / "runs").exists()


def test_a_run_written_to_a_file_keeps_its_whole_summary_and_scripts_get_the_report_as_json(tmp_path, seeds_file):
    """A scheduled run's log, CI or `| tee` is not a terminal: the summary table must not be cut to 80
    columns (`cach…`, numbers lost). `--json` prints the report alone on stdout."""
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    with FaultyServer() as server:
        def run(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "germinate.cli", "run", "--backend", "openai", "--base-url", server.base_url,
                 "--seeds", str(seeds_file), "--max-llm-calls", "48", "--max-records", "4",
                 "--output-dir", str(tmp_path / "runs"), *extra],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
            )
        logged, scripted = run("--run-id", "logged"), run("--run-id", "scripted", "--json")
    assert logged.returncode == 0, logged.stderr
    assert "…" not in logged.stdout
    header = next(line for line in logged.stdout.splitlines() if "stage" in line and "kept" in line)
    assert header.split("┃")[1:-1] and [cell.strip() for cell in header.split("┃")[1:-1]] == [
        "stage", "in", "kept", "dropped", "LLM calls", "cached", "tokens", "time"]
    assert "\n4 rows (4 generated) in " in logged.stdout
    card = (tmp_path / "runs" / "logged" / "dataset" / "README.md").read_text()
    assert f'load_dataset("{tmp_path / "runs" / "logged" / "dataset"}", split="train")' in card
    assert scripted.returncode == 0, scripted.stderr
    report = json.loads(scripted.stdout)
    assert report["rows"] == 4 and report["status"] == "complete" and report["run_id"] == "scripted"
