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
