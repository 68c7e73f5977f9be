# Shared state of the workflow: validated config and study, output paths, GPU and SLURM site settings, checks of
# where the workflow runs, stale-lock recovery.
# Logic lives in workflow/scripts/studylib.py (also used by the aggregation scripts and the tests).
import fcntl
import functools
import logging
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
for _key in ("partial", "reference_required", "allow_cpu"):
    if isinstance(config.get(_key), str) and config[_key].lower() in ("true", "false"):
        config[_key] = config[_key].lower() == "true"

# `snakemake --report results/<study>/report.html`: the report's path names its study (studylib.report_study).
REPORT = studylib.report_request(sys.argv[1:])
# Building a report (not running): it documents what exists, so runs never trained are not part of its DAG.
REPORT_ONLY = REPORT is not None and not REPORT.after_run

try:
    # Fills in the schema defaults in place, so report templates see them too.
    studylib.validate_schema(config, "configuration (config/config.yaml + --config)", studylib.CONFIG_SCHEMA_PATH, "config")
    if REPORT is not None:
        explicit = "study" in workflow.config_settings.overwrite_config
        config["study"] = studylib.report_study(REPORT.path, config["results_dir"], str(config["study"]), explicit, REPO / "config")
    NORMALISATION_FILE = REPO / "config" / "normalisation.yaml"
    NORMALISATION = studylib.load_normalisation(NORMALISATION_FILE)
    STUDY_FILE = studylib.resolve_study_path(str(config["study"]), REPO / "config")
    # Resolving task and algorithm names imports dime (torch); SLURM job steps re-parse this file and skip it, and
    # so does a report, which runs nothing.
    STUDY = studylib.load_study(STUDY_FILE, NORMALISATION, check_registry=not (workflow.remote_exec or REPORT_ONLY))
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
    """Partition/account for sbatch from DIME_SLURM_PARTITION / DIME_SLURM_ACCOUNT, checked once per run (first by
    check_execution, so that a missing setting stops the workflow with one line before anything is submitted)."""
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


# ------------------------------------------------------------------------------------ where jobs will run
# The executor and dry-run mode are known only once Snakemake builds the DAG, after this file is parsed. The train
# rule's input function (no files) runs these checks then: before the lock, the job table or any submission, and a
# sys.exit there (unlike in a resource function, which Snakemake wraps in a traceback) prints exactly one line.
def train_checks(wildcards):
    """No input files; stops the workflow with one line when a run that still has to train cannot train here."""
    if not os.path.exists(summary_path(run_of(wildcards))):
        check_execution()
    return []


@functools.cache
def check_execution():
    """Real runs only: with --profile slurm, SLURM's commands and site settings must be there; locally, a study
    meant for GPUs needs a visible GPU or allow_cpu=true."""
    if workflow.executor_plugin is None or workflow.dryrun or workflow.touch or not workflow.is_main_process:
        return
    if getattr(workflow.executor_plugin, "name", None) == "slurm":
        missing = [tool for tool in ("sbatch", "squeue") if shutil.which(tool) is None]
        if missing:
            _one_line_exit(
                f"--profile slurm submits training jobs with sbatch and polls them with squeue, but {missing[0]} is "
                "not on PATH: this machine is not a SLURM login node. Submit from one, or train here with "
                "`snakemake --cores all` (a GPU study also needs --config allow_cpu=true)"
            )
        slurm_site()
    elif workflow.local_exec and STUDY.data["resources"]["requires_gpu"] and LOCAL_GPUS == 0:
        if not config["allow_cpu"]:
            _one_line_exit(
                f"study {STUDY.name!r} is meant for GPUs (resources.requires_gpu in "
                f"{studylib.display_path(STUDY_FILE)}) but this machine shows none (CUDA_VISIBLE_DEVICES, "
                "nvidia-smi); submit it to a cluster with --profile slurm, or add --config allow_cpu=true to train "
                "it on the CPU anyway"
            )


# ------------------------------------------------------------------------------------ stale Snakemake locks
# Snakemake locks the outputs it works on in .snakemake/locks/ and removes the locks when it exits, but not when it
# is killed (SIGKILL, a closed terminal); every later call then stops with a LockException until `--unlock`. Every
# Snakemake process of this workflow (in its main process) holds a shared flock on .snakemake/dime-alive.lock for
# its whole life; the kernel drops it when the process dies, however it dies. A new call that can take the flock
# exclusively knows that no Snakemake process of this workflow is alive in this directory, so locks found there
# were left by a killed one and are removed. While another call runs, its locks are left alone and Snakemake's own
# check applies. (Across machines sharing the directory over NFS this needs working NFS locks, as every flock.)
def hold_liveness_lock():
    state = Path(".snakemake")
    state.mkdir(exist_ok=True)
    fd = os.open(state / "dime-alive.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # another Snakemake call of this workflow is alive: its locks are real
    else:
        stale = sorted((state / "locks").glob("*.lock"))
        for lock in stale:
            lock.unlink(missing_ok=True)
        if stale:
            print("Removed stale Snakemake locks left by a killed call (no other call runs here).", file=sys.stderr)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


if workflow.is_main_process:
    LIVENESS_LOCK = hold_liveness_lock()


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


def all_summaries(wildcards=None):
    return [summary_path(run) for run in STUDY.runs.values()]


def collected_summaries(wildcards):
    """Every run's summary.json; with partial=true, or when building a report, only those that exist."""
    paths = all_summaries()
    if config["partial"] or REPORT_ONLY:
        paths = [p for p in paths if os.path.exists(p)]
    return paths


RUNS_FINISHED = f"{OUT}/.runs_finished"


def runs_finished_flag(wildcards):
    """The flag of rule runs_finished, which every full aggregation waits for (not partial ones, not reports)."""
    return [] if config["partial"] or REPORT_ONLY else [RUNS_FINISHED]


PLOT_KINDS = ["interval_estimates", "sample_efficiency", "learning_curves", "performance_profiles", "poi"]


def experiment_outputs(experiment):
    tables = [f"{OUT}/tables/{experiment}_{k}.{ext}" for k in ("aggregate", "per_task", "poi") for ext in ("md", "tex", "html", "csv")]
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
    targets = [f"{OUT}/README.md", f"{OUT}/summary.html", f"{OUT}/provenance.json", f"{OUT}/scores_long.csv"]
    for experiment in EXPERIMENTS:
        targets += experiment_outputs(experiment)
    # The flag of rule runs_finished is a target: a fresh clone (committed tables, no runs) trains the study.
    return targets + reproduction_outputs() + runs_finished_flag(None)  # workflow/rules/reference.smk
