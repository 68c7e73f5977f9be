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
    return importlib.import_module("benchmarks.throughput")


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


GPU_CHECK = REPO_ROOT / "benchmarks" / "gpu_check.py"


def test_gpu_check_cpu_form_measures_and_lists_what_it_skipped(tmp_path):
    """The GPU check's tiny CPU form: DIME's checks and eager throughput run, runs sharing the device are timed
    together, and what cannot run here (CUDA graphs, the GPU<->CPU resume) or does not fit in the budget (compiled
    throughput on a CPU) is listed with its reason, in the report and in the JSON."""
    args = ["--device", "cpu", "--budget-s", "100", "--runs", "1", "2", "--algos", "--window-s", "1"]
    result = subprocess.run(
        [sys.executable, str(GPU_CHECK), *args, "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("GPU check: DIME tiny configuration") and "h per 1M env steps" in summary, summary
    report = json.loads((tmp_path / "throughput-cpu-gpu-check.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    # nothing planned is missing from the record (one DIME run alone is the eager measurement itself)
    assert len(steps) == 7, list(steps)
    (checks,) = steps["DIME checks"]["results"]
    assert checks["checks"] and all(check["ok"] for check in checks["checks"])
    (eager,) = steps["DIME throughput, off"]["results"]
    assert eager["env_steps_per_s"] > 0 and eager["env_steps"] >= 1
    assert steps["DIME throughput, cudagraphs"]["reason"] == "needs CUDA"
    assert "budget" in steps["DIME throughput, on"]["reason"]
    for step in steps.values():
        assert step["status"] == "done" or step.get("reason") or "error" in step["results"][0], step
    shared = steps["2 DIME run(s) sharing the device, off"]
    if shared["status"] == "done":  # two processes, timed over the same window
        assert len(shared["results"]) == 2 and all(r["env_steps_per_s"] > 0 for r in shared["results"])
    markdown = (tmp_path / "throughput-cpu-gpu-check.md").read_text()
    assert summary.split("; report")[0] in markdown and report["command"] in markdown
    assert "* DIME throughput, cudagraphs: skipped: needs CUDA" in markdown
