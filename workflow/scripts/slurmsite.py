"""Site settings a SLURM submission needs: partition and account from environment variables, checked early.

``DIME_SLURM_PARTITION`` and ``DIME_SLURM_ACCOUNT`` become the training jobs' ``slurm_partition`` /
``slurm_account`` resources (sbatch ``-p`` / ``-A``). When one is unset and the cluster needs it (no default
partition; accounts enforced through ``AccountingStorageEnforce``), the workflow stops before submitting anything
with one line saying which variable to set. The account is never guessed: snakemake-executor-plugin-slurm's
guess fails on clusters without accounting, and ``--slurm-no-account`` has been a no-op since plugin 1.2.0.
"""

from __future__ import annotations

import os
import shutil
import subprocess

PARTITION_VAR = "DIME_SLURM_PARTITION"
ACCOUNT_VAR = "DIME_SLURM_ACCOUNT"


class SiteError(RuntimeError):
    """The cluster needs a setting that is not given; the message is one line."""


def _scontrol(*args: str) -> str | None:
    binary = shutil.which("scontrol")
    if binary is None:
        return None
    try:
        return subprocess.run([binary, *args], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def has_default_partition(partitions: str) -> bool:
    """``scontrol show partition -o`` output: one line per partition; the default one says Default=YES."""
    return any("Default=YES" in line.split() for line in partitions.splitlines())


def enforces_accounts(config: str) -> bool:
    """``scontrol show config``: AccountingStorageEnforce listing associations/limits/qos/safe means -A is needed."""
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageEnforce":
            flags = {flag.strip().lower() for flag in value.split(",")}
            return bool(flags & {"associations", "limits", "qos", "safe", "wckeys"})
    return False


def site_resources(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The slurm_partition / slurm_account resources of training jobs; raises SiteError when one is needed."""
    env = os.environ if environ is None else environ
    resources: dict[str, str] = {}
    partition, account = env.get(PARTITION_VAR), env.get(ACCOUNT_VAR)
    if partition:
        resources["slurm_partition"] = partition
    else:
        partitions = _scontrol("show", "partition", "-o")
        if partitions is not None and not has_default_partition(partitions):
            raise SiteError(f"this SLURM cluster has no default partition: set {PARTITION_VAR}=<partition>")
    if account:
        resources["slurm_account"] = account
    else:
        config = _scontrol("show", "config")
        if config is not None and enforces_accounts(config):
            raise SiteError(
                f"this SLURM cluster enforces accounts (AccountingStorageEnforce): set {ACCOUNT_VAR}=<account> "
                "(list yours with: sacctmgr show assoc user=$USER format=account)"
            )
    return resources
