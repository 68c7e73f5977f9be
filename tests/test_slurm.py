"""The smoke study through `--profile slurm` on a real one-node SLURM cluster with fake GPUs, two runs per GPU: each
sbatch job is a Snakemake job group of two training runs holding one GPU, and a killed group resumes both runs.

tests/slurm/start_cluster.sh installs Debian's slurmctld/slurmd/munge when missing and starts the cluster; when it
cannot (not root, no apt-get, daemons do not come up) the test fails: a CI machine like ours is expected to run it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dime.checkpoint import load_checkpoint
from tests.conftest import REPO_ROOT
from tests.test_workflow import SMOKE_CONFIG, check_smoke_outputs, copy_workflow, ok, run_snakemake

sys.path.insert(0, str(REPO_ROOT / "workflow" / "scripts"))
import gpu_launch
import slurmsite
import studylib

SCRIPTS = REPO_ROOT / "tests" / "slurm"
STATE_DIR = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/dime-slurm-test"))


@pytest.fixture
def cluster():
    # One test cluster per machine (it owns /etc/slurm/*.conf and its ports): a second SLURM test waits here
    # instead of restarting the daemons under the first one's jobs.
    lock = open(STATE_DIR.with_name(STATE_DIR.name + ".lock"), "w")  # noqa: SIM115 (held for the whole test)
    fcntl.flock(lock, fcntl.LOCK_EX)
    start = subprocess.run(
        ["bash", str(SCRIPTS / "start_cluster.sh"), str(STATE_DIR)], capture_output=True, text=True, timeout=900
    )
    if start.returncode != 0:
        lock.close()
    assert start.returncode == 0, f"could not start the test SLURM cluster:\n{start.stdout}\n{start.stderr[-5000:]}"
    try:
        yield STATE_DIR
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop_cluster.sh"), str(STATE_DIR)], capture_output=True, timeout=120)
        lock.close()


def edit_study(work: Path, edit) -> None:
    path = work / "config" / "studies" / "smoke.yaml"
    study = yaml.safe_load(path.read_text())
    edit(study)
    path.write_text(yaml.safe_dump(study, sort_keys=False))


SLURM_ARGS = ("--cores", "2", "--profile", "slurm", "--slurm-init-seconds-before-status-checks", "2", *SMOKE_CONFIG)


@pytest.mark.slurm
def test_smoke_study_through_the_slurm_profile(cluster, tmp_path):
    work = copy_workflow(tmp_path / "repo")
    assert (work / "slurm").resolve() == (work / "profiles" / "slurm").resolve()
    edit_study(work, lambda study: study["resources"].update(runs_per_gpu=2))
    # The profile's status-check delay (40 s) is meant for real clusters; the test polls squeue every few seconds.
    output = ok(run_snakemake(work, *SLURM_ARGS, timeout=600))
    results = work / "results" / "smoke"
    check_smoke_outputs(results)
    # Every training run executed in a SLURM job shared with one other run; aggregation stayed local.
    runs_by_job: dict[str, list[Path]] = {}
    for summary_path in (results / "runs").glob("*/*/*/seed*/summary.json"):
        summary = json.loads(summary_path.read_text())
        assert summary["slurm_job_id"], summary_path
        runs_by_job.setdefault(summary["slurm_job_id"], []).append(summary_path.parent)
    assert sorted(len(runs) for runs in runs_by_job.values()) == [2, 2, 2, 2], runs_by_job
    assert "localrule collect" in output and "localrule aggregate" in output
    # One allocation per group: one GPU, the CPUs and memory of both runs.
    shown = scontrol_job(cluster, sorted(runs_by_job)[0])
    assert "gres/gpu=1" in shown or "gres:gpu:1" in shown, shown
    assert "NumCPUs=2 " in shown and "mem=3000M" in shown, shown

    # A killed group resumes every run: raise the budget of two runs (one group), cancel their job while both train
    # (each checkpoints on SIGTERM mid-way), and the profile's retry finishes both from those checkpoints.
    edit_study(work, lambda study: study["experiments"]["main"].update(steps=3000))
    run_dirs = [results / "runs" / "sac" / "gym" / "Pendulum-v1" / f"seed{seed}" for seed in (0, 1)]
    targets = [str((run / "summary.json").relative_to(work)) for run in run_dirs]
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *targets, *SLURM_ARGS],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        # Both trainers rewrite config.yaml once they have restored their checkpoints, right before training.
        resumed = lambda: all(mtime(run / "config.yaml") > started for run in run_dirs)  # noqa: E731
        wait_for(lambda: resumed() or process.poll() is not None, 300, "both runs to resume")
        assert process.poll() is None, f"snakemake ended before the runs resumed:\n{process.communicate()[0][-6000:]}"
        (killed,) = squeue(cluster, "R")
        killed_at = time.time()
        subprocess.run(["scancel", killed], check=True, env=slurm_env(cluster), timeout=60)
        # Each trainer checkpoints on SIGTERM at the step it had reached (its log goes when Snakemake retries).
        wait_for(lambda: all(mtime(run / "checkpoint.pt") > killed_at for run in run_dirs), 120, "SIGTERM checkpoints")
        stopped_at = [checkpoint_step(run) for run in run_dirs]
        assert all(600 < step < 3000 for step in stopped_at), stopped_at
        stdout, _ = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.communicate(timeout=60)
    assert process.returncode == 0, stdout[-6000:]
    final_jobs = set()
    for run in run_dirs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["total_steps"] == 3000 and summary["slurm_job_id"] != killed, summary
        final_jobs.add(summary["slurm_job_id"])
        steps = [int(line.split(",")[0]) for line in (run / "eval.csv").read_text().splitlines()[1:]]
        assert steps == [1, *range(300, 3001, 300)], steps
    assert len(final_jobs) == 1, "the retried group holds both runs again"


def slurm_env(cluster: Path) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(cluster / "slurm.conf")}


def scontrol_job(cluster: Path, job_id: str) -> str:
    shown = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, env=slurm_env(cluster), timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def squeue(cluster: Path, state: str) -> list[str]:
    listing = subprocess.run(
        ["squeue", "-h", "-t", state, "-o", "%i"], capture_output=True, text=True, env=slurm_env(cluster), timeout=60
    )
    return listing.stdout.split()


def checkpoint_step(run: Path) -> int:
    return load_checkpoint(run / "checkpoint.pt", {})["step"]


def mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


# ------------------------------------------------------------------------------ several runs per GPU (no cluster)
def test_local_gpu_slots_spread_runs_over_gpus_first():
    """Two runs per GPU on two GPUs: slots 0..3 map to GPUs 0, 1, 0, 1, so runs fill every GPU before doubling up."""
    assert gpu_launch.slot_devices(["0", "1"], 2) == ["0", "1", "0", "1"]
    assert gpu_launch.slot_devices(["3"], 3) == ["3", "3", "3"]


def test_runtime_estimate_accounts_for_sharing():
    run = studylib.Run("dime", "dime", (), "dmc/dog-run", 0, 1_000_000)
    alone = {"hours_per_million_steps": {"dmc": 1.0}, "runtime_margin": 1.0, "min_runtime_minutes": 1}
    assert studylib.runtime_minutes(run, {**alone, "runs_per_gpu": 1}) == 60
    assert studylib.runtime_minutes(run, {**alone, "runs_per_gpu": 4}) == 240  # default: runs only take turns
    assert studylib.runtime_minutes(run, {**alone, "runs_per_gpu": 4, "sharing_slowdown": 1.5}) == 90


# ------------------------------------------------------------------------------- site checks (no cluster)
ENFORCED = "ClusterName = big\nAccountingStorageEnforce = associations,limits,qos\n"
OPEN = "ClusterName = small\nAccountingStorageEnforce = none\n"
WITH_DEFAULT = "PartitionName=gpu Default=YES State=UP\nPartitionName=cpu Default=NO State=UP\n"
NO_DEFAULT = "PartitionName=gpu Default=NO State=UP\nPartitionName=cpu Default=NO State=UP\n"


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    """Put an `scontrol` on PATH that prints the given `show config` / `show partition -o` text."""

    def install(config: str, partitions: str) -> None:
        (tmp_path / "config.txt").write_text(config)
        (tmp_path / "partitions.txt").write_text(partitions)
        binary = tmp_path / "bin"
        binary.mkdir(exist_ok=True)
        script = binary / "scontrol"
        script.write_text(
            f'#!/bin/sh\nif [ "$2" = config ]; then cat {tmp_path}/config.txt; else cat {tmp_path}/partitions.txt; fi\n'
        )
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{binary}:{os.environ['PATH']}")
        assert shutil.which("scontrol") == str(script)

    return install


def test_site_settings_come_from_environment_variables(fake_scontrol):
    fake_scontrol(ENFORCED, NO_DEFAULT)
    environ = {"DIME_SLURM_PARTITION": "gpu", "DIME_SLURM_ACCOUNT": "proj42"}
    assert slurmsite.site_resources(environ) == {"slurm_partition": "gpu", "slurm_account": "proj42"}


@pytest.mark.parametrize(
    ("config", "partitions", "variable"),
    [(OPEN, NO_DEFAULT, "DIME_SLURM_PARTITION"), (ENFORCED, WITH_DEFAULT, "DIME_SLURM_ACCOUNT")],
)
def test_site_that_needs_a_setting_stops_with_one_line(fake_scontrol, config, partitions, variable):
    fake_scontrol(config, partitions)
    with pytest.raises(slurmsite.SiteError) as error:
        slurmsite.site_resources({})
    assert variable in str(error.value) and "\n" not in str(error.value)


def test_open_site_needs_no_setting(fake_scontrol):
    fake_scontrol(OPEN, WITH_DEFAULT)
    assert slurmsite.site_resources({}) == {}
