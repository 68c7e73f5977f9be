"""Provenance recorded next to every result: code version, config hash, package versions, hardware, scheduler ids."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

_PACKAGES = (
    "torch",
    "numpy",
    "gymnasium",
    "mujoco",
    "dm-control",
    "shimmy",
    "myosuite",
    "snakemake",
    "rliable",
)
_REPO_ROOT = Path(__file__).resolve().parent.parent


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON form of ``config`` (sorted keys, no whitespace)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Generated outputs that are committed (``results/quick/``, benchmark figures): a study or benchmark rewrites them
#: while it runs, so changes there do not make the code that produced a result "dirty".
GENERATED_DIRECTORIES = ("results",)


def git_state(root: Path = _REPO_ROOT) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout at ``root`` (by default the one this package was imported from), or
    (None, None) outside git. Dirty: a tracked file outside :data:`GENERATED_DIRECTORIES` differs from the commit."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        outside_outputs = [f":(top,exclude){directory}" for directory in GENERATED_DIRECTORIES]
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", *outside_outputs))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def hardware(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def scheduler_ids() -> dict[str, str | None]:
    return {key.lower(): os.environ.get(key) for key in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")}
