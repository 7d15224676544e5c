"""germinate as a user installs it: a wheel, into a fresh environment, used from an empty folder."""

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from servers import FaultyServer

# What a wheel is built from: the repository without what is made in it.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a clean copy: a build/ folder left in the repository would leak stale modules into it."""
    source = tmp_path_factory.mktemp("source") / "germinate"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), "."],
        cwd=source, check=True, capture_output=True, timeout=300,
    )
    (built,) = out.glob("germinate-*.whl")
    return built


def test_the_wheel_installs_one_package_with_its_data_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"germinate"}
    for shipped in ("germinate/data/seeds/default.jsonl", "germinate/data/personas.txt",
                    "germinate/data/constraints.yaml", "germinate/taxonomy/taxonomy.yaml",
                    "germinate/flows/build.py", "germinate/generators/aide.py", "germinate/filters/heuristics.py"):
        assert shipped in names


def test_the_installed_wheel_runs_from_an_empty_folder_with_its_default_seeds(wheel, tmp_path):
    """A fresh venv holding only the wheel; the dependencies are the test environment's, reached by a
    path (not a site dir, so its editable install of germinate stays out of sight)."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    empty = tmp_path / "empty"
    empty.mkdir()

    def python_in_empty(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-c", code], cwd=empty, capture_output=True, text=True, timeout=120)

    located = python_in_empty(
        "import json, germinate.config as c; d = c.RunConfig(); "
        "print(json.dumps([str(p) for p in (d.seeds, d.tcia.library, d.glan.taxonomy, c.DATA_DIR / 'personas.txt')]))"
    )
    for path in json.loads(located.stdout):
        assert path.startswith(str(site / "germinate")) and Path(path).is_file(), path
    assert "No module named 'filters'" in python_in_empty("import filters").stderr

    with FaultyServer() as server:
        run = subprocess.run(
            [env_dir / "bin" / "germinate", "run", "--backend", "openai", "--base-url", server.base_url,
             "--model", "M", "--max-llm-calls", "64", "--max-records", "8", "--run-id", "wheel"],
            cwd=empty, capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                                     "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
        )
    assert run.returncode == 0, run.stderr
    loaded = python_in_empty(
        "import json, pyarrow.dataset as ds, germinate.config as c; "
        "t = ds.dataset('data/runs/wheel/dataset/data').to_table(); "
        "shipped = {json.loads(line)['id'] for line in c.RunConfig().seeds.open()}; "
        "print(t.num_rows, {r['seed_id'] or r['id'] for r in t.to_pylist()} <= shipped)"
    )
    assert loaded.stdout.split() == ["8", "True"], loaded.stdout + loaded.stderr
