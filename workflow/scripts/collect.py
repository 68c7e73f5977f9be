"""Gather every run of a study into one long table, one run-status table and a provenance manifest.

    python workflow/scripts/collect.py --study config/studies/quick.yaml --runs-dir results/quick/runs \
        --normalisation config/normalisation.yaml --long results/quick/scores_long.csv \
        --status results/quick/runs.csv --manifest results/quick/provenance.json

``scores_long.csv`` has one row per evaluation point of every finished run: the algorithm label and its
implementation, suite, task, seed, env step, mean return, final-step and any-step success, the study's score (return,
or final-step success on MyoSuite), the normalised score (config/normalisation.yaml) and the run's provenance
(git commit, config hash, device, host, SLURM job id). ``runs.csv`` lists every run the study expects with its
status (ok, running, resumable, failed, missing; unfinished runs as ``python -m dime.status`` sees them, with their
current step), so that missing, unfinished and failed seeds reach the tables instead of disappearing.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import studylib

from dime.provenance import git_state
from dime.run_logging import format_duration
from dime.status import run_status

LONG_COLUMNS = [
    "algorithm",
    "algo",
    "overrides",
    "suite",
    "task",
    "seed",
    "step",
    "eval_index",
    "return",
    "success_final",
    "success_any",
    "mean_length",
    "metric",
    "score",
    "normalised",
    "git_commit",
    "git_dirty",
    "config_hash",
    "device",
    "hostname",
    "slurm_job_id",
    "run_dir",
]
STATUS_COLUMNS = [
    "algorithm",
    "algo",
    "suite",
    "task",
    "seed",
    "status",
    "detail",
    "target_steps",
    "total_steps",
    "final_step",
    "final_score",
    "wall_clock_s",
    "env_steps_per_s",
    "device",
    "run_dir",
]
_ANALYSIS_PACKAGES = ("rliable", "arch", "numpy", "scipy", "pandas", "matplotlib", "seaborn", "snakemake")


def _score(row: pd.Series, metric: str) -> float:
    value = row["success_final"] if metric == "success" else row["mean_return"]
    return float(value) if pd.notna(value) else math.nan


def read_run(run: studylib.Run, runs_dir: Path, normalisation: dict[str, Any]) -> tuple[dict, pd.DataFrame | None]:
    """Status row and evaluation rows of one run (None when it has not finished)."""
    directory = run.directory(runs_dir)
    status: dict[str, Any] = {
        "algorithm": run.label,
        "algo": run.algo,
        "suite": run.suite,
        "task": run.task,
        "seed": run.seed,
        "target_steps": run.steps,
        "run_dir": str(directory),
    }
    summary_path = directory / "summary.json"
    if not summary_path.exists():
        return {**status, **_unfinished(directory, run.steps)}, None
    summary = json.loads(summary_path.read_text())
    evals = pd.read_csv(directory / "eval.csv")
    metric = summary["metric"]
    hardware = summary.get("hardware") or {}
    evals["score"] = [_score(row, metric) for _, row in evals.iterrows()]
    frame = pd.DataFrame(
        {
            "algorithm": run.label,
            "algo": run.algo,
            "overrides": json.dumps(dict(run.overrides), sort_keys=True),
            "suite": run.suite,
            "task": run.task,
            "seed": run.seed,
            "step": evals["step"],
            "eval_index": evals["eval_index"],
            "return": evals["mean_return"],
            "success_final": evals["success_final"],
            "success_any": evals["success_any"],
            "mean_length": evals["mean_length"],
            "metric": metric,
            "score": evals["score"],
            "normalised": [studylib.normalise(run.task, s, normalisation) for s in evals["score"]],
            "git_commit": summary.get("git_commit"),
            "git_dirty": summary.get("git_dirty"),
            "config_hash": summary.get("config_hash"),
            "device": summary.get("device"),
            "hostname": hardware.get("hostname", summary.get("hostname")),
            "slurm_job_id": summary.get("slurm_job_id"),
            "run_dir": str(directory),
        },
        columns=LONG_COLUMNS,
    )
    final = summary.get("final_score")
    ok = final is not None and math.isfinite(final)
    status.update(
        status="ok" if ok else "failed",
        detail="" if ok else f"non-finite final score {final!r}",
        total_steps=summary.get("total_steps"),
        final_step=summary.get("final_eval_step"),
        final_score=final,
        wall_clock_s=summary.get("wall_clock_s"),
        env_steps_per_s=summary.get("env_steps_per_s"),
        device=summary.get("device"),
    )
    return status, frame


def _unfinished(directory: Path, target_steps: int) -> dict[str, Any]:
    """Status columns of a run without summary.json: running or resumable at its current step, failed, or missing."""
    state = run_status(directory, target_steps)
    if state.state == "running":
        eta = f", ETA {format_duration(state.eta_s)}" if state.eta_s is not None else ""
        detail = f"at env step {state.step} of {target_steps}{eta}"
        return {"status": "running", "detail": detail, "total_steps": state.step}
    if state.state == "resumable":
        return {
            "status": "resumable",
            "detail": f"stopped at env step {state.step} of {target_steps}",
            "total_steps": state.step,
        }
    if state.state == "failed":
        return {"status": "failed", "detail": state.detail, "total_steps": state.step}
    return {"status": "missing", "detail": "no summary.json (not started)"}


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _ANALYSIS_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def manifest(study: studylib.Study, status: pd.DataFrame, runs_dir: Path, args: argparse.Namespace) -> dict:
    """Everything needed to say where the numbers came from: study, code, packages, and each run's record."""
    root = studylib.WORKFLOW_DIR.parent
    # Dirty as for the runs: the study's own committed results, rewritten by this very workflow, do not count.
    commit, dirty = git_state(root)
    runs = []
    for row in status.to_dict("records"):
        summary_path = Path(row["run_dir"]) / "summary.json"
        record = {k: row[k] for k in ("algorithm", "algo", "task", "seed", "status", "detail")}
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            record["summary"] = {k: v for k, v in summary.items() if k not in ("algo", "task", "seed")}
        runs.append(record)
    ok = status[status["status"] == "ok"]
    return {
        "study": study.name,
        "study_file": studylib.display_path(study.path),
        "study_sha256": hashlib.sha256(study.path.read_bytes()).hexdigest(),
        "study_resolved": study.data,
        "normalisation_file": studylib.display_path(args.normalisation),
        "normalisation_sha256": hashlib.sha256(Path(args.normalisation).read_bytes()).hexdigest(),
        "collected_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "workflow_git_commit": commit,
        "workflow_git_dirty": dirty,
        "analysis_versions": _versions(),
        "runs_expected": len(status),
        "runs_ok": len(ok),
        "runs_missing": int((status["status"] == "missing").sum()),
        "runs_unfinished": int(status["status"].isin(["running", "resumable"]).sum()),
        "runs_failed": int((status["status"] == "failed").sum()),
        "training_wall_clock_h": float(ok["wall_clock_s"].fillna(0).sum()) / 3600,
        "devices": sorted(str(d) for d in ok["device"].dropna().unique()),
        "runs_dir": str(runs_dir),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--runs-dir", required=True)
    parser.add_argument("--normalisation", required=True)
    parser.add_argument("--long", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--manifest", required=True)
    args = parser.parse_args(argv)

    normalisation = studylib.load_normalisation(args.normalisation)
    study = studylib.load_study(args.study, check_registry=False)
    runs_dir = Path(args.runs_dir)
    statuses, frames = [], []
    for run in study.runs.values():
        status, frame = read_run(run, runs_dir, normalisation)
        statuses.append(status)
        if frame is not None:
            frames.append(frame)
    status_table = pd.DataFrame(statuses, columns=STATUS_COLUMNS)
    long = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LONG_COLUMNS)
    for path in (args.long, args.status, args.manifest):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    long.to_csv(args.long, index=False)
    status_table.to_csv(args.status, index=False)
    Path(args.manifest).write_text(json.dumps(manifest(study, status_table, runs_dir, args), indent=2) + "\n")


if __name__ == "__main__":
    main()
