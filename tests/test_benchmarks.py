"""The throughput benchmark runs and reports what it measured; its small configurations are valid for every algorithm.

Only the mechanics are tested here: speed targets are the benchmark's business (``results/benchmarks/``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from dime.agents import ALGORITHMS, load_algorithm
from dime.tasks import get_task
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "throughput.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("throughput_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_small_configuration_is_valid(algo):
    small = load_benchmark().SMALL
    assert set(small) == set(ALGORITHMS)
    cls = load_algorithm(algo)
    cls.default_config(get_task("dmc/cartpole-swingup")).replace(**small[algo])


def test_report_has_the_rows_and_provenance(tmp_path):
    args = ["--algos", "sac", "--configs", "small", "--compile", "off", "--steps", "3", "--burn-in", "1"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(tmp_path), "--label", "test"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "throughput-cpu-test.json").read_text())
    (row,) = report["rows"]
    assert (row["algo"], row["config"], row["mode"]) == ("sac", "small", "off") and row["env_steps_per_s"] > 0
    assert report["meta"]["versions"]["torch"].startswith("2.13.0") and report["meta"]["threads"] == 1
    assert "--label test" in report["meta"]["command"] and "--compile off" in report["meta"]["command"]
    table = (tmp_path / "throughput-cpu-test.md").read_text()
    assert "| sac | small | off |" in table and report["meta"]["command"] in table
