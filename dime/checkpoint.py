"""Atomic file writes and validated checkpoints.

Every file a run produces is written to a temporary sibling and renamed over the target (``os.replace`` is atomic
on POSIX), so a kill at any moment leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (corrupt, other format, or another run's)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Load ``path`` and check that its identity fields equal ``expected`` (algo, task, seed, config hash)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # any unpickling failure means the file is unusable
        raise CheckpointError(
            f"checkpoint {path} is corrupt ({type(error).__name__}); delete it to restart the run"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has an unknown format; delete it to restart the run")
    for key, value in expected.items():
        if state.get(key) != value:
            raise CheckpointError(
                f"checkpoint {path} belongs to another run ({key}={state.get(key)!r}, this run has {value!r}); "
                "use another --out directory or delete the checkpoint"
            )
    return state
