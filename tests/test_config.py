from pathlib import Path

import pytest

from germinate.config import build_config
from germinate.errors import UserError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "aide:\n  hops: 3\nllm:\n  concurrency: 8\nbudget:\n  max_records: 500\n")
    config = build_config(path, {"aide.hops": 1, "llm.model": None})
    assert config.aide.hops == 1  # the command line wins over the file
    assert config.llm.concurrency == 8
    assert config.budget.max_records == 500
    assert config.llm.backend == "transformers"  # untouched default


@pytest.mark.parametrize(
    "text, message",
    [
        ("aide:\n  hopz: 2\n", "unknown key 'aide.hopz'"),
        ("colour: red\n", "unknown key 'colour'"),
        ("llm:\n  concurrency: many\n", "'llm.concurrency'"),
        ("budget:\n  max_records: 0\n", "'budget.max_records'"),
        ("llm:\n  backend: gpt\n", "'llm.backend'"),
        ("- just\n- a list\n", "expected a mapping"),
        ("aide: [unclosed\n", ":2: invalid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as error:
        build_config(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="no such config file"):
        build_config(tmp_path / "nope.yaml")


def test_empty_section_takes_overrides_and_a_scalar_section_is_an_error(tmp_path):
    assert build_config(write(tmp_path, "aide:\n"), {"aide.hops": 3}).aide.hops == 3
    with pytest.raises(UserError, match="'aide' must be a mapping"):
        build_config(write(tmp_path, "aide: 3\n"), {"aide.hops": 3})


def test_configs_that_name_llamacpp_run_the_embedded_model(tmp_path):
    """The embedded GGUF model ran through llama.cpp before it ran on torch: old configs keep working."""
    config = build_config(write(tmp_path, "llm:\n  backend: llamacpp\n"))
    assert config.llm.backend == "transformers"


def test_the_settings_that_shape_a_run_leave_out_filters_it_does_not_run():
    """A resume compares the settings that shape the data: the section of a filter the run does not
    name in `stages` is not one of them, so installing a filter plugin (its section appears in every
    config) or changing an unused filter's settings does not stop an older run from resuming."""
    from germinate.config import data_settings

    config = build_config(overrides={"stages": ["respond", "heuristics"], "quality.select.pool": 5.0})
    shaped = data_settings(config.model_dump(mode="json"))
    assert set(shaped["quality"]) == {"heuristics"}
    dumped = config.model_dump(mode="json")
    dumped["quality"]["short_answers"] = {"enabled": True, "min_words": 3}  # a plugin's section
    assert data_settings(dumped) == shaped


def test_what_is_made_once_per_machine_is_never_left_half_made(tmp_path):
    """An export that fails midway (a model that will not convert, a full disk) leaves nothing behind,
    and the next run makes it again; one that succeeds is made once."""
    from germinate.settings import made_once

    def failing(scratch):
        (scratch / "model.onnx").write_bytes(b"half")
        raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space"):
        made_once(tmp_path / "model", failing)
    assert list(tmp_path.iterdir()) == []
    calls = []
    for _ in range(2):
        made_once(tmp_path / "model", lambda scratch: calls.append((scratch / "about.json").write_text("{}")))
    assert len(calls) == 1 and [p.name for p in tmp_path.iterdir()] == ["model"]
