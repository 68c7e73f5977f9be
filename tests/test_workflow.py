"""The Snakemake workflow end to end: the smoke study with real training and real rliable, the HTML report,
reruns that must not retrain, a killed Snakemake, missing seeds, the documented extension path, the paper study's
DAG, schema and override errors, a SLURM profile without SLURM, a GPU study on a CPU machine and the local GPU
handling. Every run happens in a temporary copy of the workflow so committed results stay put."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO_ROOT, scaled, subprocess_env

REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"  # a local copy: tests never download
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "profiles", "slurm")
EXPERIMENT_TABLES = ("aggregate", "per_task", "poi")
PLOT_KINDS = ("interval_estimates", "sample_efficiency", "learning_curves", "performance_profiles", "poi")
SMOKE_CONFIG = ["--config", "study=smoke", f"reference_dir={REFERENCE_DIR}"]
SMOKE_REPORT = ["--report", "results/smoke/report.html", "--config", f"reference_dir={REFERENCE_DIR}"]  # no study=


# ------------------------------------------------------------------------------------------------ helpers
def copy_workflow(dest: Path) -> Path:
    """The files a user checks out to run the workflow (the dime package comes from the installed checkout)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO_ROOT / name
        if source.is_symlink():
            os.symlink(os.readlink(source), dest / name)
        elif source.is_dir():
            shutil.copytree(source, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def run_snakemake(
    workdir: Path, *args: str, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """snakemake in its own process group, killed as a group when it overruns (SLURM waits can hang otherwise)."""
    command = [sys.executable, "-m", "snakemake", *args]
    process = subprocess.Popen(
        command,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=subprocess_env(**(env or {})),
    )
    timeout = scaled(timeout)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"snakemake {' '.join(args)} timed out after {timeout} s:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def ok(result: subprocess.CompletedProcess) -> str:
    """Combined output of a successful run (Snakemake logs to both streams)."""
    assert result.returncode == 0, f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result.stdout + result.stderr


def error_lines(stderr: str) -> list[str]:
    """What a failed call said about the failure: its non-empty stderr lines after Snakemake's own preamble (the
    profile notice, the run header up to "Building DAG of jobs...")."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if "Building DAG of jobs..." in lines:
        lines = lines[len(lines) - lines[::-1].index("Building DAG of jobs...") :]
    return [line for line in lines if not PROFILE_NOTICE.fullmatch(line)]


PROFILE_NOTICE = re.compile(r"Using .*profile.* for setting default command line arguments\.")


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run."""
    counts: dict[str, int] = {}
    block = output[output.index("Job stats:") :]
    for line in block.splitlines()[3:]:
        match = re.fullmatch(r"(\S+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def expected_outputs(results: Path, experiments: list[str]) -> list[Path]:
    files = [results / name for name in ("scores_long.csv", "runs.csv", "provenance.json", "README.md")]
    for experiment in experiments:
        files += [
            results / "tables" / f"{experiment}_{kind}.{ext}"
            for kind in EXPERIMENT_TABLES
            for ext in ("md", "tex", "csv")
        ]
        files += [results / "plots" / f"{experiment}_{kind}.{ext}" for kind in PLOT_KINDS for ext in ("png", "pdf")]
    kinds = (".md", ".tex", ".html", ".csv", "_summary.md", "_summary.csv")
    files += [results / "tables" / f"reproduction{kind}" for kind in kinds]
    files += [results / "plots" / f"reproduction_{label}.{ext}" for label in ("dime", "sac") for ext in ("png", "pdf")]
    return files


def check_smoke_outputs(results: Path) -> None:
    """Every table and plot of the smoke study exists and agrees with the raw evaluations."""
    for path in expected_outputs(results, ["main"]):
        assert path.is_file() and path.stat().st_size > 200, f"missing or empty: {path}"
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if path.suffix == ".pdf":
            assert path.read_bytes()[:5] == b"%PDF-"
    long = pd.read_csv(results / "scores_long.csv")
    runs = long.groupby(["algorithm", "task", "seed"])
    assert len(runs) == 8, "2 algorithms x 2 tasks x 2 seeds"
    assert all(sorted(g["step"]) == [1, 300, 600] for _, g in runs), "evaluations at step 1 and every 300"
    assert long["config_hash"].notna().all() and long["git_commit"].notna().all()
    assert set(long["algo"]) == {"dime", "sac"} and set(long["suite"]) == {"gym", "dmc"}
    pendulum = long[long["task"] == "gym/Pendulum-v1"]
    assert pendulum["return"].between(-2000, 0).all()
    assert (pd.read_csv(results / "runs.csv")["status"] == "ok").all()

    finals = long[long["step"] == 600].groupby(["algorithm", "task"])["score"].mean()
    per_task = pd.read_csv(results / "tables" / "main_per_task.csv")
    assert len(per_task) == 4 and (per_task["seeds_found"] == 2).all()
    for row in per_task.itertuples():
        # IQM of two seeds trims nothing (int(0.5) = 0): the mean of the two final scores.
        assert row.iqm == pytest.approx(finals[(row.algorithm, row.task)], rel=1e-6)
        assert row.iqm_lo <= row.iqm <= row.iqm_hi
    aggregate = pd.read_csv(results / "tables" / "main_aggregate.csv")
    assert set(zip(aggregate["suite"], aggregate["algorithm"], strict=True)) == {
        (s, a) for s in ("gym", "dmc") for a in ("dime", "sac")
    }
    assert (aggregate["iqm_lo"] <= aggregate["iqm"]).all() and (aggregate["iqm"] <= aggregate["iqm_hi"]).all()
    assert (aggregate["bootstrap_reps"] == 1000).all() and (aggregate["seeds_used"] == 2).all()
    poi = pd.read_csv(results / "tables" / "main_poi.csv")
    assert set(poi["y"]) == {"sac"} and poi["poi"].between(0, 1).all()
    assert "\\toprule" in (results / "tables" / "main_aggregate.tex").read_text()

    reproduction = pd.read_csv(results / "tables" / "reproduction_summary.csv")
    verdicts = dict(zip(zip(reproduction["label"], reproduction["task"]), reproduction["verdict"], strict=True))
    assert verdicts[("dime", "gym/Pendulum-v1")] == verdicts[("sac", "gym/Pendulum-v1")] == "no published curve"
    for label in ("dime", "sac"):  # the DIME authors' curves and SimbaV2's SAC runs both have pendulum-swingup
        expected = {"consistent", "lower", "higher"} if REFERENCE_DIR.is_dir() else {"reference unavailable"}
        assert verdicts[(label, "dmc/pendulum-swingup")] in expected
    manifest = json.loads((results / "provenance.json").read_text())
    assert manifest["runs_ok"] == 8 and manifest["study"] == "smoke"
    assert {r["algorithm"] for r in manifest["runs"]} == {"dime", "sac"}
    assert all(r["summary"]["config_hash"] for r in manifest["runs"])
    index = (results / "README.md").read_text()
    assert "plots/main_learning_curves.png" in index and "Reproduction check" in index


# ------------------------------------------------------------------------------------------- smoke study
@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """The smoke study, trained and aggregated once for the tests of this module."""
    work = copy_workflow(tmp_path_factory.mktemp("smoke") / "repo")
    ok(run_snakemake(work, "--cores", "2", *SMOKE_CONFIG, timeout=900))
    return work


def test_smoke_study_end_to_end(smoke):
    check_smoke_outputs(smoke / "results" / "smoke")


def test_html_report_with_captions(smoke):
    """The report's path names its study (no --config study=); the landing page shows the aggregate table, tables
    render inline (tests/test_report.py), and a report of results produced here raises no warning."""
    from tests.test_report import check_report

    report = smoke / "results" / "smoke" / "report.html"
    output = ok(run_snakemake(smoke, *SMOKE_REPORT, timeout=300))
    assert "Missing metadata" not in output and "not produced in this working directory" not in output
    check_report(report, smoke / "results" / "smoke")
    html = report.read_text(errors="replace")
    assert len(html) > 100_000
    for caption in ("Per-suite aggregate of normalised scores", "Performance profiles", "Reproduction check"):
        assert caption in html, caption
    assert "main_interval_estimates.png" in html


def test_report_of_results_produced_elsewhere(smoke, tmp_path):
    """Committed or copied results: no Snakemake job records and no run directories here. The report holds every
    table and plot, with one line saying where the results come from instead of a warning per output."""
    from tests.test_report import check_report

    work = tmp_path / "repo"
    shutil.copytree(smoke, work, symlinks=True, ignore=shutil.ignore_patterns(".snakemake", "runs"))
    output = ok(run_snakemake(work, *SMOKE_REPORT, timeout=300))
    assert "Missing metadata" not in output and output.count("not produced in this working directory") == 1
    check_report(work / "results" / "smoke" / "report.html", work / "results" / "smoke")


def test_fresh_clone_with_committed_results_trains_the_study(smoke, tmp_path):
    """A clone holds a study's committed tables and plots but no runs, no flag of rule runs_finished and no
    Snakemake job records: the documented command trains every run, then aggregates them again."""
    work = copy_workflow(tmp_path / "repo")
    committed = work / "results" / "smoke"
    shutil.copytree(smoke / "results" / "smoke", committed, ignore=shutil.ignore_patterns("runs", ".runs_finished"))
    assert (committed / "scores_long.csv").exists() and not (committed / "runs").exists()
    counts = job_counts(ok(run_snakemake(work, "-n", *SMOKE_CONFIG)))
    assert counts["train"] == 8 and counts["runs_finished"] == counts["collect"] == 1, counts
    # In the trained study the flag exists: nothing runs again.
    assert "Nothing to be done" in ok(run_snakemake(smoke, "-n", *SMOKE_CONFIG))


def test_finished_runs_are_not_retrained(smoke, tmp_path):
    work = tmp_path / "repo"
    shutil.copytree(smoke, work, symlinks=True)
    # Unrelated edits: an aggregation script, the study description, a comment in the training rule.
    with (work / "workflow" / "scripts" / "make_plots.py").open("a") as handle:
        handle.write("\n# edited\n")
    study_path = work / "config" / "studies" / "smoke.yaml"
    study = yaml.safe_load(study_path.read_text())
    study["description"] = "edited"
    study_path.write_text(yaml.safe_dump(study, sort_keys=False))
    train_rule = work / "workflow" / "rules" / "train.smk"
    rule_text = train_rule.read_text().replace("# One training job", "# Edited. One training job")
    # A code-only edit of the shell command: the default workflow profile's rerun-triggers ignore it.
    train_rule.write_text(rule_text.replace('"--out $(dirname', '"--out  $(dirname'))
    assert train_rule.read_text() != rule_text
    counts = job_counts(ok(run_snakemake(work, "-n", *SMOKE_CONFIG)))
    assert "train" not in counts, counts
    assert counts["plots"] == 1 and counts["collect"] == 1

    # Changing what defines a run (an override) retrains exactly those runs.
    study["algorithms"]["sac"]["set"]["batch_size"] = 16
    study_path.write_text(yaml.safe_dump(study, sort_keys=False))
    assert job_counts(ok(run_snakemake(work, "-n", *SMOKE_CONFIG)))["train"] == 4

    # partial=true aggregates what finished and reports the rest; it trains nothing.
    study["algorithms"]["sac"]["set"]["batch_size"] = 32
    study_path.write_text(yaml.safe_dump(study, sort_keys=False))
    (work / "results" / "smoke" / "runs" / "dime" / "gym" / "Pendulum-v1" / "seed1" / "summary.json").unlink()
    table = "results/smoke/tables/main_per_task.md"
    output = ok(run_snakemake(work, "--cores", "2", table, *SMOKE_CONFIG, "partial=true"))
    assert "rule train" not in output
    text = (work / table).read_text()
    # Its checkpoint is still there: the tables say the run can resume, and where it stopped.
    assert "1/2†" in text
    assert "DIME on gym/Pendulum-v1 (Gym): seed 1 resumable (stopped at env step 600 of 600)" in text


def test_killed_training_job_resumes_on_rerun(tmp_path):
    """Killing Snakemake mid-run leaves the undeclared checkpoint in place; the next call resumes from it: the
    finished run's accumulated training time exceeds the whole last call, so the first part was not redone.
    A call killed outright (SIGKILL: no cleanup) leaves Snakemake's locks behind; the plain command recovers.
    The study is marked for GPUs, so every call here also needs (and tests) allow_cpu=true."""
    work = copy_workflow(tmp_path / "repo")
    study = {
        "seeds": [0],
        "eval_every": 500,
        "checkpoint_every": 100000,  # only the checkpoint written on SIGTERM
        "focus": "sac",
        "resources": {"requires_gpu": True},
        "algorithms": {"sac": {"algo": "sac", "set": {"hidden": [32, 32], "learning_starts": 300, "batch_size": 32}}},
        "experiments": {"main": {"tasks": ["gym/Pendulum-v1"], "algorithms": ["sac"], "steps": 4000}},
    }
    (work / "config" / "studies" / "resume.yaml").write_text(yaml.safe_dump(study))
    run_dir = work / "results" / "resume" / "runs" / "sac" / "gym" / "Pendulum-v1" / "seed0"
    target = str((run_dir / "summary.json").relative_to(work))
    args = ["--cores", "1", target, "--config", "study=resume", "allow_cpu=true"]

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=work, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())  # fmt: skip

    first = start()
    try:
        deadline = time.monotonic() + scaled(300)
        while time.monotonic() < deadline:
            evals = run_dir / "eval.csv"
            if evals.exists() and "\n3500," in evals.read_text():
                break
            time.sleep(0.2)
        else:
            pytest.fail("training did not reach step 3500 within 300 s")
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=scaled(120))
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists()
    assert "received SIGTERM" in (run_dir / "train.log").read_text()
    locks = work / ".snakemake" / "locks"
    assert not any(locks.glob("*.lock")), "Snakemake cleans up after SIGTERM"

    second = start()
    try:
        deadline = time.monotonic() + scaled(300)
        while not any(locks.glob("*.lock")):
            assert second.poll() is None and time.monotonic() < deadline, "the second call never took its locks"
            time.sleep(0.1)
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(timeout=scaled(60))
    assert any(locks.glob("*.lock")), "SIGKILL left no stale lock; nothing is tested"

    started = time.monotonic()
    output = ok(run_snakemake(work, *args))
    last_call = time.monotonic() - started
    assert "Removed stale Snakemake locks" in output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_steps"] == 4000
    assert [int(line.split(",")[0]) for line in (run_dir / "eval.csv").read_text().splitlines()[1:]] == [
        1,
        *range(500, 4001, 500),
    ]
    assert summary["wall_clock_s"] > last_call, (summary["wall_clock_s"], last_call)


TOY_AGENT = '''
"""A do-nothing baseline: the extension test's user algorithm."""
from dataclasses import dataclass

import torch

from dime.agents import Agent, AgentConfig


@dataclass
class ToyConfig(AgentConfig):
    action_scale: float = 0.5


class ToyAgent(Agent):
    Config = ToyConfig

    def act(self, obs, deterministic):
        if deterministic:
            return torch.zeros(obs.shape[0], self.act_dim, device=obs.device)
        return self.config.action_scale * (2 * torch.rand(obs.shape[0], self.act_dim, device=obs.device) - 1)

    def update(self, buffer, env_step):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
'''


def test_extension_adds_a_toy_algorithm_through_the_documented_path(smoke, tmp_path):
    """README "Adding a baseline": one Agent file (as module:Class) + one entry under `algorithms` + one label in an
    experiment. The new label gets training jobs, shows up in every table, and nothing else is retrained."""
    work = tmp_path / "repo"
    shutil.copytree(smoke, work, symlinks=True)
    (work / "my_baselines").mkdir()
    (work / "my_baselines" / "__init__.py").write_text("")
    (work / "my_baselines" / "toy.py").write_text(textwrap.dedent(TOY_AGENT))
    study_path = work / "config" / "studies" / "smoke.yaml"
    study = yaml.safe_load(study_path.read_text())
    study["algorithms"]["toy"] = {"algo": "my_baselines.toy:ToyAgent", "set": {"learning_starts": 100}}
    study["experiments"]["main"]["algorithms"].append("toy")
    study_path.write_text(yaml.safe_dump(study, sort_keys=False))

    dry = ok(run_snakemake(work, "-n", *SMOKE_CONFIG))
    assert job_counts(dry)["train"] == 4
    trained = set(re.findall(r"wildcards: label=([^,]+), task=([^,]+), seed=(\d+)", dry))
    assert trained == {("toy", t, s) for t in ("gym/Pendulum-v1", "dmc/pendulum-swingup") for s in ("0", "1")}

    tables = [f"results/smoke/tables/main_{kind}.{ext}" for kind in EXPERIMENT_TABLES for ext in ("md", "csv")]
    ok(run_snakemake(work, "--cores", "2", *tables, *SMOKE_CONFIG, timeout=600))
    results = work / "results" / "smoke"
    aggregate = pd.read_csv(results / "tables" / "main_aggregate.csv")
    assert {"toy"} <= set(aggregate["algorithm"]) and aggregate["iqm"].notna().all()
    per_task = pd.read_csv(results / "tables" / "main_per_task.csv")
    toy = per_task[per_task["algorithm"] == "toy"]
    assert len(toy) == 2 and (toy["algo"] == "my_baselines.toy:ToyAgent").all() and (toy["seeds_found"] == 2).all()
    assert "P(DIME > toy)" in (results / "tables" / "main_poi.md").read_text()
    assert "| toy " in (results / "tables" / "main_aggregate.md").read_text()
    assert set(pd.read_csv(results / "scores_long.csv")["algorithm"]) == {"dime", "sac", "toy"}


# -------------------------------------------------------------------------------------------- paper study
def test_paper_study_dry_run_lists_every_job(tmp_path):
    """The paper's study from the spec, counted by hand: (label, task) pairs x 10 seeds."""
    dmc = 7 * 5 + 6 + 4 + 2  # dime, bro, bro-fast, crossq, qsm on all 7; diffusion-ql 6, consistency-ac 4, dipo 2
    myo = 4 * 5  # dime, bro, bro-fast, crossq, qsm
    gym = 2 * 8  # dime, crossq, qsm, diffusion-ql, consistency-ac, dipo, qvpo, dacer
    ablations = 8 + 4 + 1 * 2  # fixed alpha (8 labels), diffusion steps (4 new labels), dime-gauss on 2 tasks
    train_jobs = (dmc + myo + gym + ablations) * 10
    experiments = 6  # dmc, myo, gym, alpha, diffusion-steps, gaussian
    work = copy_workflow(tmp_path / "repo")
    output = ok(run_snakemake(work, "-n", "-p", "--config", "study=paper", timeout=300))
    counts = job_counts(output)
    assert counts["train"] == train_jobs == 970
    assert counts["aggregate"] == counts["tables"] == counts["plots"] == experiments
    # + runs_finished, collect, fetch_reference, reproduction, index, all
    assert counts["total"] == train_jobs + 3 * experiments + 6

    def job(label: str, task: str, seed: int) -> str:
        start = output.index(f"wildcards: label={label}, task={task}, seed={seed}\n")
        return output[start : output.index("\n\n", start)]

    dime_dog = job("dime", "dmc/dog-run", 0)  # shared by the 1M comparison and the 3M ablations: trained to 3M
    assert "--steps 3000000" in dime_dog and "--eval-every 24000" in dime_dog and "runtime=1202" in dime_dog
    assert "--steps 1000000" in job("crossq", "dmc/dog-run", 9)
    assert "--set alpha=0.001" in job("dime-alpha-1e-3", "dmc/dog-run", 4)
    assert "--set diffusion_steps=32" in job("dime-diffusion-32", "dmc/humanoid-run", 2)
    assert "--algo dime-gauss" in job("dime-gauss", "dmc/humanoid-run", 0)
    assert "mem_mb=12000" in job("bro", "myo/pen-twirl-hard", 3)


# ------------------------------------------------------------------------------------------ bad studies
@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda s: s["experiments"]["main"].update(steps="many"), "experiments.main.steps"),
        (lambda s: s["experiments"]["main"]["tasks"].append("dmc/cartpole-swingupp"), "experiments.main.tasks[2]"),
        # Overrides are built into each label's config for each of its tasks when the study is read.
        (lambda s: s["algorithms"]["sac"]["set"].update(hiden=[8]), "algorithms.sac.set.hiden"),
    ],
)
def test_bad_study_fails_with_one_line_naming_the_key(tmp_path, edit, key):
    work = copy_workflow(tmp_path / "repo")
    study = yaml.safe_load((work / "config" / "studies" / "smoke.yaml").read_text())
    edit(study)
    (work / "config" / "studies" / "bad.yaml").write_text(yaml.safe_dump(study))
    config = work / "config" / "config.yaml"
    config.write_text(config.read_text().replace("study: quick", "study: bad"))
    result = run_snakemake(work, "-n")
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"key '{key}'" in lines[0] and "bad.yaml" in lines[0]


def test_slurm_profile_without_slurm_stops_with_one_line(tmp_path):
    """A real submission needs sbatch; a dry run only plans and works anywhere."""
    work = copy_workflow(tmp_path / "repo")
    no_slurm = {"PATH": path_without_slurm(tmp_path)}
    result = run_snakemake(work, "--profile", "slurm", *SMOKE_CONFIG, env=no_slurm)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "sbatch" in lines[0] and "not on PATH" in lines[0], result.stderr
    assert not (work / "results").exists()
    assert job_counts(ok(run_snakemake(work, "-n", "--profile", "slurm", *SMOKE_CONFIG, env=no_slurm)))["train"] == 8


def path_without_slurm(tmp_path: Path) -> str:
    """PATH with SLURM's commands hidden (tests/test_slurm.py may have installed them): each directory holding one
    is replaced by a directory of links to everything else in it."""
    slurm = {"sbatch", "squeue", "sacct", "scontrol", "scancel", "srun", "sinfo"}
    directories = []
    for index, directory in enumerate(os.environ["PATH"].split(os.pathsep)):
        if any((Path(directory) / tool).exists() for tool in slurm):
            shadow = tmp_path / f"path{index}"
            shadow.mkdir()
            for entry in Path(directory).iterdir():
                if entry.name not in slurm:
                    (shadow / entry.name).symlink_to(entry)
            directory = str(shadow)
        directories.append(directory)
    return os.pathsep.join(directories)


def test_gpu_study_on_a_cpu_machine_is_refused(tmp_path):
    """A study marked requires_gpu stops before training when no GPU is visible (allow_cpu=true, which overrides
    it, is used by test_killed_training_job_resumes_on_rerun)."""
    work = copy_workflow(tmp_path / "repo")
    study_path = work / "config" / "studies" / "smoke.yaml"
    study = yaml.safe_load(study_path.read_text())
    study["resources"]["requires_gpu"] = True
    study_path.write_text(yaml.safe_dump(study))
    result = run_snakemake(work, "--cores", "1", *SMOKE_CONFIG, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "meant for GPUs" in lines[0] and "--config allow_cpu=true" in lines[0], result.stderr
    assert not (work / "results" / "smoke" / "runs").exists()


def test_bad_config_value_fails_with_one_line(tmp_path):
    work = copy_workflow(tmp_path / "repo")
    result = run_snakemake(work, "-n", "--config", "gpus_per_job=two")
    assert result.returncode != 0
    assert "key 'gpus_per_job'" in result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------- GPUs
def test_cpu_machine_requests_no_gpu_and_gpu_machine_one_per_job(tmp_path):
    """On a CPU-only machine training jobs ask for no GPU (nothing waits for one); with visible GPUs each job takes
    one GPU and one of the machine's `local_gpus` tokens (the cap on concurrent local GPU jobs)."""
    work = copy_workflow(tmp_path / "repo")
    target = "results/smoke/runs/sac/gym/Pendulum-v1/seed0/summary.json"
    cpu = ok(run_snakemake(work, "-n", "-p", target, "--config", "study=smoke", env={"CUDA_VISIBLE_DEVICES": ""}))
    assert "gpu=0, local_gpus=0" in cpu and "--gpus 0 --local-gpus 0" in cpu
    two = ok(run_snakemake(work, "-n", "-p", target, "--config", "study=smoke", env={"CUDA_VISIBLE_DEVICES": "0,1"}))
    assert "gpu=1, local_gpus=1" in two and "--gpus 1 --local-gpus 2" in two


def test_gpu_launch_gives_concurrent_jobs_different_gpus(tmp_path):
    launch = REPO_ROOT / "workflow" / "scripts" / "gpu_launch.py"
    show = "import os, time; print(os.environ.get('CUDA_VISIBLE_DEVICES')); time.sleep(1.5)"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}

    def start(gpus: int, extra_env: dict | None = None) -> subprocess.Popen:
        command = [sys.executable, str(launch), "--gpus", str(gpus), "--local-gpus", "2", "--lock-dir", str(tmp_path),
                   "--", sys.executable, "-c", show]  # fmt: skip
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**env, **(extra_env or {})})

    jobs = [start(1), start(1)]
    assert sorted(p.communicate(timeout=60)[0].strip() for p in jobs) == ["0", "1"]
    # Slots are free again once the commands exit; a job without a GPU and a SLURM job are left alone.
    assert start(1).communicate(timeout=60)[0].strip() in {"0", "1"}
    assert start(0).communicate(timeout=60)[0].strip() == "None"
    assert start(1, {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "3"}).communicate(timeout=60)[0].strip() == "3"
