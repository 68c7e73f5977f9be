"""Shared test helpers.

The suite must pass on a loaded 2-core machine: every subprocess that trains runs with one torch/OpenMP thread
(a second OpenMP thread spin-waits for a busy core and makes small ops ~10x slower), and every timeout is scaled
by ``TIMEOUT_SCALE`` (default 1; e.g. ``TIMEOUT_SCALE=3 make test`` on a slow or shared machine), including
pytest-timeout's per-test limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_SCALE = float(os.environ.get("TIMEOUT_SCALE", "1"))
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def scaled(seconds: float) -> float:
    """A timeout in seconds, scaled for the machine the suite runs on."""
    return seconds * TIMEOUT_SCALE


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a test's subprocess: this one, single-threaded, without Python warnings."""
    return {**os.environ, **SINGLE_THREAD_ENV, "PYTHONWARNINGS": "ignore", **extra}


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m dime.train --threads 1`` as a user would, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "dime.train", "--threads", "1", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        env=subprocess_env(),
        **kwargs,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scale pytest-timeout's limit (``timeout`` in pyproject.toml, or a test's own mark) by TIMEOUT_SCALE."""
    if TIMEOUT_SCALE == 1:
        return
    try:
        default = float(config.getini("timeout") or 0)
    except ValueError:  # pytest-timeout is not installed: no limit to scale
        return
    for item in items:
        mark = item.get_closest_marker("timeout")
        limit = float(mark.args[0]) if mark and mark.args else default
        if limit > 0:
            item.add_marker(pytest.mark.timeout(limit * TIMEOUT_SCALE), append=False)


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One intra-op thread for in-process torch work: the ops in tests are small, and on a shared 2-core machine a
    second OpenMP thread spin-waits for the busy core and makes them ~10x slower (measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Under ``pytest -m gpu``, name every CUDA test that was skipped and why (``-rs`` folds identical reasons)."""
    if "gpu" not in (config.option.markexpr or ""):
        return
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if "gpu" in report.keywords]
    if skipped:
        terminalreporter.section(f"{len(skipped)} CUDA tests skipped")
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            terminalreporter.line(f"{report.nodeid}: {reason.removeprefix('Skipped: ')}")
