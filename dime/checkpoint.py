"""Atomic file writes, checkpoints verified by a digest, and the lock on a run directory.

Every file a run produces is written to a temporary sibling and renamed over the target (``os.replace`` is atomic
on POSIX), so a kill at any moment leaves either the old or the new file, never a torn one. New files get the
permissions the umask gives (``0o666 & ~umask``), like any file a shell command creates.

A checkpoint is one header line, one digest line and a ``torch.save`` payload streamed straight into the
temporary file::

    DIME-CHECKPOINT v2
    sha256 <64 hex digits: SHA-256 of the first line and the payload>
    <torch.save zip archive>

The digest is checked before anything is unpickled, so a flipped bit anywhere in the file is refused in one line
instead of being loaded as a subtly different state (or crashing deep inside torch). Checkpoints of the first
format (a bare ``torch.save`` archive, no digest) are refused in one line too.

A training run holds an exclusive ``flock`` on ``<run directory>/.lock`` (which holds its pid while it runs), so a
second training on the same directory is refused instead of interleaving with the first. The kernel releases the
lock when the process dies, however it dies, so a lock left by a killed run is simply taken over. On NFS, Linux
maps ``flock`` to POSIX locks that the server arbitrates between machines (NFSv4, or v3 with lockd); on a file
system mounted with ``nolock`` the lock only excludes processes on the same machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

CHECKPOINT_FORMAT = 2
_FIRST_LINE = f"DIME-CHECKPOINT v{CHECKPOINT_FORMAT}\n".encode()
_HEADER = re.compile(rb"DIME-CHECKPOINT v(\d+)\nsha256 ([0-9a-f]{64})\n")
_HEADER_SIZE = len(_FIRST_LINE) + len(b"sha256 \n") + 64
_ZIP_MAGIC = b"PK\x03\x04"  # a bare torch.save archive: the first, digest-less checkpoint format
LOCK_NAME = ".lock"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (corrupt, other format, or another run's)."""


class RunDirectoryBusy(RuntimeError):
    """Another process is training in this run directory."""


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` atomically when the block ends without an error."""
    path = Path(path)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # os.open applies the umask to 0o666; tempfile.mkstemp would create the file 0600 for good.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


class _HashingWriter:
    """The file object ``torch.save`` writes to: forwards every chunk to the file and into the digest."""

    def __init__(self, handle: BinaryIO, digest: Any):
        self.handle, self.digest = handle, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` with its digest; the payload is streamed, so no second in-memory copy is made."""
    digest = hashlib.sha256(_FIRST_LINE)
    with atomic_file(path) as handle:
        handle.write(bytes(_HEADER_SIZE))  # placeholder, rewritten once the digest is known
        torch.save({"format": CHECKPOINT_FORMAT, **state}, _HashingWriter(handle, digest))
        handle.seek(0)
        handle.write(_FIRST_LINE + f"sha256 {digest.hexdigest()}\n".encode())


def load_checkpoint(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Verify ``path``'s digest, load it, and check that its identity fields equal ``expected`` (algo, task,
    seed, config hash). Every problem raises :class:`CheckpointError` with one line; the file is only read."""
    delete = "delete it to restart the run"
    try:
        with open(path, "rb") as handle:
            header = handle.read(_HEADER_SIZE)
            match = _HEADER.fullmatch(header)
            if match is None:
                if header.startswith(_ZIP_MAGIC):
                    raise CheckpointError(
                        f"checkpoint {path} was written by an earlier version of this code (no integrity digest); "
                        f"{delete}"
                    )
                raise CheckpointError(f"checkpoint {path} is corrupt (unrecognised header); {delete}")
            digest = hashlib.sha256(header[: match.end(1) + 1])
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
            if digest.hexdigest() != match.group(2).decode():
                raise CheckpointError(f"checkpoint {path} is corrupt (digest mismatch); {delete}")
            if int(match.group(1)) != CHECKPOINT_FORMAT:
                raise CheckpointError(
                    f"checkpoint {path} has format v{int(match.group(1))}, this code reads v{CHECKPOINT_FORMAT}; "
                    f"{delete}"
                )
            handle.seek(_HEADER_SIZE)  # torch.load reads the archive from the current position
            state = torch.load(handle, map_location="cpu", weights_only=False)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}") from None
    except CheckpointError:
        raise
    except Exception as error:  # the digest matched, so the writer itself saved something unusable
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(error).__name__}); {delete}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has an unknown format; {delete}")
    for key, value in expected.items():
        if state.get(key) != value:
            raise CheckpointError(
                f"checkpoint {path} belongs to another run ({key}={state.get(key)!r}, this run has {value!r}); "
                "use another --out directory or delete the checkpoint"
            )
    return state


_held_locks: dict[str, int] = {}  # run directory (real path) -> id of the thread holding its lock in this process


@contextmanager
def locked_run_directory(directory: Path) -> Iterator[None]:
    """Create ``directory`` and hold its lock for the block; raise :class:`RunDirectoryBusy` naming the holder's
    pid when another process (or another thread of this one) holds it. Re-entrant within one thread, so the CLI
    can lock before it inspects the directory and the trainer can lock again inside."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(directory)
    holder = _held_locks.get(key)
    if holder == threading.get_ident():
        yield
        return
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        if holder is not None:
            raise BlockingIOError
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = str(os.getpid()) if holder is not None else os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f"pid {pid}" if pid else "another process"
        raise RunDirectoryBusy(f"{directory} is in use by {who}; wait for it to finish or stop it") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held_locks[key] = threading.get_ident()
        yield
    finally:
        _held_locks.pop(key, None)
        os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock
