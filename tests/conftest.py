"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m dime.train`` as a user would, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "dime.train", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        **kwargs,
    )


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
