# Shared state of the workflow: validated config and study, output paths, GPU and SLURM site settings.
# Logic lives in workflow/scripts/studylib.py (also used by the aggregation scripts and the tests).
import functools
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(workflow.basedir)
SCRIPTS = REPO / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))

import slurmsite  # noqa: E402
import studylib  # noqa: E402

# The interpreter running Snakemake runs every job too, so jobs see the same environment on a login node, a
# compute node with the same shared file system, or a laptop, without relying on PATH.
PYTHON = sys.executable


def _one_line_exit(message):
    # sys.exit with a string prints exactly that line; raising would add Snakemake's traceback block.
    sys.exit(message)


# `--config partial=true` arrives as a string; the schema wants booleans.
for _key in ("partial", "reference_verify", "reference_required"):
    if isinstance(config.get(_key), str) and config[_key].lower() in ("true", "false"):
        config[_key] = config[_key].lower() == "true"

try:
    # Fills in the schema defaults in place, so report templates see them too.
    studylib.validate_schema(config, "configuration (config/config.yaml + --config)", studylib.CONFIG_SCHEMA_PATH, "config")
    NORMALISATION_FILE = REPO / "config" / "normalisation.yaml"
    NORMALISATION = studylib.load_normalisation(NORMALISATION_FILE)
    STUDY_FILE = studylib.resolve_study_path(str(config["study"]), REPO / "config")
    # Resolving task and algorithm names imports dime (torch); SLURM job steps re-parse this file and skip it.
    STUDY = studylib.load_study(STUDY_FILE, NORMALISATION, check_registry=not workflow.remote_exec)
except studylib.StudyError as error:
    _one_line_exit(str(error))

OUT = f"{config['results_dir']}/{STUDY.name}"
RUNS = f"{OUT}/runs"
EXPERIMENTS = [exp.name for exp in STUDY.experiments]
CHECKPOINT_EVERY = STUDY.data["checkpoint_every"]
COMPILE = STUDY.data["compile"]
TRAIN_THREADS = STUDY.data["resources"]["threads"]
RUNS_PER_GPU = STUDY.data["resources"]["runs_per_gpu"]

wildcard_constraints:
    label=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    task=r"(dmc|gym|myo)/[A-Za-z0-9_.-]+",
    seed=r"\d+",
    experiment="|".join(EXPERIMENTS),


# ------------------------------------------------------------------------------------------------ GPUs
# Snakemake only knows its executor once the DAG is scheduled, after this file is parsed, so everything that depends
# on local vs cluster execution is a resource function (evaluated per job, at scheduling time).
def local_gpu_count():
    """GPUs this machine shows: CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`; 0 without NVIDIA tools."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


LOCAL_GPUS = local_gpu_count()
# Local runs hold one `local_gpus` token (a GPU slot) per training job, so at most LOCAL_GPUS x runs_per_gpu train at
# once (the scheduler takes global resources from the command line or from here, before any job exists). Cluster
# jobs take no token: SLURM allocates their GPUs, and a login node's GPU count must not cap the cluster.
if LOCAL_GPUS > 0 and "local_gpus" not in workflow.global_resources:
    workflow.register_resource("local_gpus", LOCAL_GPUS * RUNS_PER_GPU)

# Several runs per GPU on a cluster: training jobs form groups of RUNS_PER_GPU (Snakemake job groups, "group
# components"; groups only exist for cluster executors), each submitted as one allocation. Summed over its members,
# a group would ask for RUNS_PER_GPU GPUs; members therefore request none and the group one through `gres` (a string
# resource, which Snakemake takes once per group instead of adding). CPUs and memory add up; the runtime is the
# members' longest, each scaled by the sharing slowdown (studylib.runtime_minutes).
def train_group(wildcards):
    components = workflow.group_settings.group_components
    if "train" not in components:
        # Set here rather than at parse time: Snakemake replaces the workflow's group settings with the command
        # line's after parsing this file and before grouping jobs, which evaluates this function first. An
        # explicit --group-components train=K wins.
        workflow.group_settings.group_components = {**components, "train": RUNS_PER_GPU}
    return "train"


TRAIN_GROUP = train_group if RUNS_PER_GPU > 1 else None


def shares_cluster_gpu():
    return workflow.non_local_exec and RUNS_PER_GPU > 1 and config["gpus_per_job"] == "auto"


def train_gpus(wildcards):
    """GPUs per training job: 1 on a cluster executor, 1 locally when a GPU is visible, 0 on a CPU-only machine
    (so `snakemake --cores all` on a laptop neither waits for a GPU nor oversubscribes one); or the configured number.
    0 on a cluster when runs share GPUs: the job group requests the one GPU (train_gres)."""
    if config["gpus_per_job"] != "auto":
        return int(config["gpus_per_job"])
    if shares_cluster_gpu():
        return 0
    return 1 if (workflow.non_local_exec or LOCAL_GPUS > 0) else 0


def train_gres(wildcards):
    return "gpu:1" if shares_cluster_gpu() else None


def train_local_gpus(wildcards):
    return 1 if (workflow.local_exec and LOCAL_GPUS > 0 and train_gpus(wildcards) > 0) else 0


# ----------------------------------------------------------------------------------------------- SLURM
@functools.cache
def slurm_site():
    """Partition/account for sbatch from DIME_SLURM_PARTITION / DIME_SLURM_ACCOUNT, checked once per run."""
    if getattr(workflow.executor_plugin, "name", None) != "slurm":
        return {}
    try:
        return slurmsite.site_resources()
    except slurmsite.SiteError as error:
        _one_line_exit(str(error))


def slurm_partition(wildcards):
    return slurm_site().get("slurm_partition")


def slurm_account(wildcards):
    return slurm_site().get("slurm_account")


# ---------------------------------------------------------------------------------------- run lookups
def run_of(wildcards):
    return STUDY.run(wildcards.label, wildcards.task, wildcards.seed)


def run_algo(wildcards):
    return run_of(wildcards).algo


def run_steps(wildcards):
    return run_of(wildcards).steps


def run_overrides(wildcards):
    """`--set k=v ...` (sorted keys), or nothing; part of the params, so changing an override retrains the run."""
    tokens = studylib.override_args(run_of(wildcards).overrides)
    return "--set " + " ".join(shlex.quote(t) for t in tokens) if tokens else ""


def run_runtime(wildcards):
    return studylib.runtime_minutes(run_of(wildcards), STUDY.data["resources"])


def run_mem_mb(wildcards):
    return STUDY.data["resources"]["mem_mb"][run_of(wildcards).suite]


def summary_path(run):
    return f"{RUNS}/{run.label}/{run.task}/seed{run.seed}/summary.json"


def collected_summaries(wildcards):
    """Every run's summary.json; with partial=true only those that exist (nothing is trained)."""
    paths = [summary_path(run) for run in STUDY.runs.values()]
    if config["partial"]:
        paths = [p for p in paths if os.path.exists(p)]
    return paths


PLOT_KINDS = ["interval_estimates", "sample_efficiency", "learning_curves", "performance_profiles", "poi"]


def experiment_outputs(experiment):
    tables = [f"{OUT}/tables/{experiment}_{k}.{ext}" for k in ("aggregate", "per_task", "poi") for ext in ("md", "tex", "csv")]
    plots = [f"{OUT}/plots/{experiment}_{k}.{ext}" for k in PLOT_KINDS for ext in ("png", "pdf")]
    return tables + plots


def plot_output(kind, title):
    """A plot of one experiment, shown in the HTML report with its caption from workflow/report/<kind>.rst."""
    return report(
        f"{OUT}/plots/{{experiment}}_{kind}.png",
        caption=f"../report/{kind}.rst",
        category="{experiment}",
        subcategory="Plots",
        labels={"experiment": "{experiment}", "figure": title},
    )


def all_targets():
    targets = [f"{OUT}/README.md", f"{OUT}/provenance.json", f"{OUT}/scores_long.csv"]
    for experiment in EXPERIMENTS:
        targets += experiment_outputs(experiment)
    targets += [f"{OUT}/tables/reproduction.{ext}" for ext in ("md", "tex", "csv")]
    targets += [f"{OUT}/plots/reproduction_overlay.{ext}" for ext in ("png", "pdf")]
    return targets
