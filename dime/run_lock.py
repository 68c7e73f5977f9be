"""Who holds a run directory's lock file, without touching the lock.

The training process holds ``<run>/.lock`` with ``flock`` while it trains
(:func:`dime.checkpoint.locked_run_directory`). Taking the lock, even shared and for a moment, could make a training
job that starts at that instant refuse to run; Linux lists every lock it holds in ``/proc/locks`` (flock, POSIX and
open-file-description locks, with the holder's pid and the file's device and inode), so this module only reads that
list. Locks held on other hosts of a shared file system are not listed there: ``dime.status`` then falls back to how
recently the run reported progress.
"""

from __future__ import annotations

import os
from pathlib import Path

#: :data:`dime.checkpoint.LOCK_NAME`, repeated so that ``dime.status`` does not import torch (a test checks they agree).
LOCK_FILE = ".lock"


def run_lock_holder(run_dir: str | Path) -> int | None:
    """The pid of the process on this host holding ``<run_dir>/.lock``, or None (no file, not held, not Linux)."""
    try:
        stat = (Path(run_dir) / LOCK_FILE).stat()
        listing = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in listing.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 00:2f:131 0 EOF"; a lock waited for carries "->" and is not held.
        fields = line.split()
        if len(fields) < 6 or "->" in fields:
            continue
        try:
            major, minor, inode = fields[5].split(":")
            device = os.makedev(int(major, 16), int(minor, 16))
            if int(inode) == stat.st_ino and device == stat.st_dev:
                return int(fields[4])
        except ValueError:
            continue
    return None
