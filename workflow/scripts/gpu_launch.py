"""Run a training command on a GPU slot of its own when several jobs share a machine's GPUs.

    python workflow/scripts/gpu_launch.py --gpus 1 --local-gpus 2 --runs-per-gpu 1 --lock-dir .snakemake/gpu-slots \
        -- CMD ...

Snakemake limits how many GPU jobs run at once (the ``local_gpus`` resource: GPUs x runs per GPU) but never tells a
local job *which* GPU to use (snakemake#281), so every job would pick GPU 0. Each GPU has ``--runs-per-gpu`` slots
(a study's ``resources: runs_per_gpu``); slot ``i`` belongs to GPU ``i mod local-gpus``, so jobs spread over the
GPUs before any GPU takes a second one. This claims a free slot with an exclusive ``flock`` on
``<lock-dir>/gpu<i>.lock``, sets ``CUDA_VISIBLE_DEVICES`` to that slot's device and ``exec``s the command with the
lock file still open, so the slot is released exactly when the command exits, however it exits. Nothing is changed
when the job requests no GPU, when there is one slot only, or under SLURM (which sets CUDA_VISIBLE_DEVICES itself).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from pathlib import Path


def visible_devices(count: int) -> list[str]:
    """Device ids of the GPUs: the current CUDA_VISIBLE_DEVICES list if set, else 0..count-1."""
    current = os.environ.get("CUDA_VISIBLE_DEVICES")
    if current:
        return [d.strip() for d in current.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def slot_devices(devices: list[str], runs_per_gpu: int) -> list[str]:
    """The device of every slot: GPU i mod len(devices), so the first len(devices) slots cover every GPU once."""
    return [devices[slot % len(devices)] for slot in range(len(devices) * runs_per_gpu)]


def claim_slot(lock_dir: Path, devices: list[str], poll_s: float = 1.0) -> tuple[int, str]:
    """Lock the first free slot; waits if all are taken (Snakemake's gpu resource makes that rare and brief)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for index, device in enumerate(devices):
            fd = os.open(lock_dir / f"gpu{index}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.set_inheritable(fd, True)  # the lock lives as long as the exec'd command
            return fd, device
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if "--" not in args:
        sys.exit("usage: gpu_launch.py --gpus N --local-gpus M [--runs-per-gpu K] --lock-dir DIR -- COMMAND ...")
    split = args.index("--")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, required=True, help="GPUs the job requested (its gpu resource)")
    parser.add_argument("--local-gpus", type=int, required=True, help="GPUs on this machine (0: not local)")
    parser.add_argument("--runs-per-gpu", type=int, default=1, help="concurrent jobs per GPU (study resources)")
    parser.add_argument("--lock-dir", type=Path, required=True)
    options = parser.parse_args(args[:split])
    command = args[split + 1 :]
    if not command:
        sys.exit("gpu_launch.py: no command after --")
    slots = options.local_gpus * options.runs_per_gpu
    if options.gpus > 0 and options.local_gpus > 0 and slots > 1 and "SLURM_JOB_ID" not in os.environ:
        devices = slot_devices(visible_devices(options.local_gpus), options.runs_per_gpu)
        _, device = claim_slot(options.lock_dir, devices)
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
