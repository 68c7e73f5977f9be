"""Provenance: which commit produced a result, and whether its code differed from that commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dime.provenance import git_state


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_dirty_means_code_changed_not_the_committed_outputs_being_regenerated(tmp_path):
    """A study rewrites its committed results/ while it runs; only a change elsewhere makes the code dirty."""
    git(tmp_path, "init", "-q")
    (tmp_path / "dime").mkdir()
    (tmp_path / "dime" / "agent.py").write_text("x = 1\n")
    (tmp_path / "results" / "quick").mkdir(parents=True)
    (tmp_path / "results" / "quick" / "scores.csv").write_text("step,return\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_state(tmp_path) == (head, False)

    (tmp_path / "results" / "quick" / "scores.csv").write_text("step,return\n1,-5\n")
    (tmp_path / "results" / "quick" / "new.csv").write_text("untracked output\n")
    assert git_state(tmp_path) == (head, False)
    (tmp_path / "results" / "quick" / "scores.csv").unlink()  # a study directory moved away before a rerun
    assert git_state(tmp_path) == (head, False)

    (tmp_path / "dime" / "agent.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (head, True)
    # From a subdirectory, too (Snakemake and the benchmarks run from anywhere in the checkout).
    assert git_state(tmp_path / "results") == (head, True)


def test_outside_git_there_is_no_commit(tmp_path):
    assert git_state(tmp_path) == (None, None)
