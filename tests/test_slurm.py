"""The smoke study through `--profile slurm` on a real one-node SLURM cluster with fake GPUs.

tests/slurm/start_cluster.sh installs Debian's slurmctld/slurmd/munge when missing and starts the cluster; when it
cannot (not root, no apt-get, daemons do not come up) the test fails: a CI machine like ours is expected to run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_workflow import SMOKE_CONFIG, check_smoke_outputs, copy_workflow, ok, run_snakemake

sys.path.insert(0, str(REPO_ROOT / "workflow" / "scripts"))
import slurmsite

SCRIPTS = REPO_ROOT / "tests" / "slurm"
STATE_DIR = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/dime-slurm-test"))


@pytest.fixture
def cluster():
    start = subprocess.run(
        ["bash", str(SCRIPTS / "start_cluster.sh"), str(STATE_DIR)], capture_output=True, text=True, timeout=900
    )
    assert start.returncode == 0, f"could not start the test SLURM cluster:\n{start.stdout}\n{start.stderr[-5000:]}"
    try:
        yield STATE_DIR
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop_cluster.sh"), str(STATE_DIR)], capture_output=True, timeout=120)


@pytest.mark.slurm
def test_smoke_study_through_the_slurm_profile(cluster, tmp_path):
    work = copy_workflow(tmp_path / "repo")
    assert (work / "slurm").resolve() == (work / "profiles" / "slurm").resolve()
    output = ok(
        run_snakemake(
            work,
            "--cores",
            "2",
            "--profile",
            "slurm",
            # The profile's default (40 s) is meant for real clusters; the test polls squeue every few seconds.
            "--slurm-init-seconds-before-status-checks",
            "2",
            *SMOKE_CONFIG,
            timeout=600,
        )
    )
    results = work / "results" / "smoke"
    check_smoke_outputs(results)
    # Every training run executed as a SLURM job that asked for one GPU; aggregation stayed local.
    job_ids = set()
    for summary_path in (results / "runs").glob("*/*/*/seed*/summary.json"):
        summary = json.loads(summary_path.read_text())
        assert summary["slurm_job_id"], summary_path
        job_ids.add(summary["slurm_job_id"])
    assert len(job_ids) == 8
    assert "localrule collect" in output and "localrule aggregate" in output
    env = {**os.environ, "SLURM_CONF": str(cluster / "slurm.conf")}
    shown = subprocess.run(
        ["scontrol", "show", "job", sorted(job_ids)[0]], capture_output=True, text=True, env=env, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "gres/gpu=1" in shown.stdout or "gres:gpu:1" in shown.stdout, shown.stdout


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
