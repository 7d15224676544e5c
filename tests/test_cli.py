"""The command line as a user meets it: bad input ends with one line, exit code 2, nothing written."""

import socket

import pytest

from conftest import DATA, germinate


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
    "unreachable server": (["--backend", "openai", "--base-url", "http://127.0.0.1:{port}/v1"], "llm.base_url: cannot reach"),
    "bad backend": (["--backend", "gpt"], "'llm.backend'"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "noinstr.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "latin1.jsonl").write_bytes(b'{"instruction": "caf\xe9"}\n')
    (tmp_path / "typo.yaml").write_text("aide:\n  hopz: 2\n")
    args, message = CASES[case]
    args = [a.format(tmp=tmp_path, port=free_port()) for a in args]
    result = germinate("run", *args, "--output-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()  # no half-written run directory
