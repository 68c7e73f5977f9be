"""Per-experiment statistics with rliable (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical Precipice").

    python workflow/scripts/aggregate.py --study config/studies/quick.yaml --experiment main \
        --long results/quick/scores_long.csv --status results/quick/runs.csv \
        --normalisation config/normalisation.yaml --out results/quick/stats/main.json

For every suite of the experiment and every algorithm label:

* per task: IQM of the raw score (return, or MyoSuite final-step success) over seeds with a 95% percentile
  stratified-bootstrap CI, plus mean, median and standard deviation, and which seeds are missing or failed;
* aggregate over the suite's tasks (normalised scores, runs x tasks): IQM, median of task means, mean of task means
  and optimality gap (γ = 1), each with a stratified-bootstrap CI;
* probability of improvement of the study's focus label over every other label, P(X > Y) averaged over the tasks
  both ran (Mann-Whitney U / (n_x n_y) per task);
* performance profiles (fraction of runs x tasks with normalised score > τ) with CIs;
* IQM sample-efficiency curves (normalised, aggregate) and per-task learning curves (raw) with CIs;
* compute cost per label: GPU-h or CPU-h per run (mean) and in total, from every run's wall clock and device.

The bootstrap is rliable's (``rly.get_interval_estimates`` / ``create_performance_profile``). rliable draws its
resampling indices from the global ``np.random`` (its ``random_state`` argument is ignored), so ``np.random.seed`` is
set right before every call, one call per label: adding a label never changes another label's intervals. The
statistics themselves are vectorised equivalents of ``rliable.metrics`` (tests/test_aggregation.py checks them
against rliable and against hand-computed values); rliable's scipy-based versions cost ~0.3 ms per call, which at
50,000 replications is the difference between seconds and minutes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import studylib
from rliable import library as rly

METRICS = ("IQM", "Median", "Mean", "Optimality gap")
NORMALISATION_TEXT = {
    "dmc": "return / 1000",
    "gym": "(return - random) / (SAC reference - random), config/normalisation.yaml",
    "myo": "final-step success rate",
}
PROFILE_POINTS = 101
COST_UNITS = ("GPU-h", "CPU-h")


# ----------------------------------------------------------------------------------------------- statistics
def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the 25% trimmed mean of all entries (scipy's ``trim_mean(x, 0.25, axis=None)``)."""
    flat = np.sort(np.asarray(scores, dtype=float).ravel())
    cut = int(0.25 * flat.size)
    return float(flat[cut : flat.size - cut].mean())


def iqm_along_runs(scores: np.ndarray) -> np.ndarray:
    """IQM over axis 0 (runs) separately for every other index, e.g. per task or per (task, eval point)."""
    ordered = np.sort(np.asarray(scores, dtype=float), axis=0)
    cut = int(0.25 * ordered.shape[0])
    return ordered[cut : ordered.shape[0] - cut].mean(axis=0)


def iqm_curve(scores: np.ndarray) -> np.ndarray:
    """IQM over runs x tasks at each eval point of a (runs, tasks, points) array."""
    return iqm_along_runs(scores.reshape(-1, scores.shape[-1]))


def aggregate_metrics(scores: np.ndarray) -> np.ndarray:
    """[IQM, median of task means, mean of task means, optimality gap at γ = 1] of a (runs, tasks) array."""
    task_means = scores.mean(axis=0)
    return np.array(
        [iqm(scores), float(np.median(task_means)), float(task_means.mean()), 1.0 - np.minimum(scores, 1.0).mean()]
    )


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) + ½ P(X = Y) per task over all run pairs (= U / (n_x n_y)), averaged over tasks."""
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    ties = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float((greater + 0.5 * ties).mean())


def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Performance profile: fraction of all runs x tasks whose normalised score exceeds each τ."""
    return (np.asarray(scores).reshape(-1)[:, None] > np.asarray(taus)[None, :]).mean(axis=0)


def interval(
    data: np.ndarray | tuple[np.ndarray, np.ndarray],
    func: Callable[..., Any],
    reps: int,
    seed: int,
    confidence: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, lower, upper) of ``func`` under rliable's stratified bootstrap, seeded right before the call.

    A tuple ``(x, y)`` is resampled independently per array (rliable's StratifiedIndependentBootstrap).
    """
    np.random.seed(seed)
    points, cis = rly.get_interval_estimates(
        {"x": data}, lambda *a: np.atleast_1d(func(*a)), reps=reps, confidence_interval_size=confidence
    )
    return np.atleast_1d(points["x"]), np.asarray(cis["x"][0]), np.asarray(cis["x"][1])


def profile(
    scores: np.ndarray, taus: np.ndarray, reps: int, seed: int, confidence: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Performance profile and its CI band through rliable's ``create_performance_profile``."""
    np.random.seed(seed)
    profiles, cis = rly.create_performance_profile(
        {"x": scores},
        taus,
        custom_profile_func=score_distribution,
        reps=reps,
        confidence_interval_size=confidence,
    )
    return profiles["x"], cis["x"][0], cis["x"][1]


def cost_unit(device: str) -> str:
    return "GPU-h" if str(device).startswith("cuda") else "CPU-h"


def compute_cost(status: pd.DataFrame, threads: int) -> dict[str, dict[str, float]]:
    """Compute spent by the runs of ``status`` (rows of runs.csv) that recorded a wall clock, finished or failed.

    A run's cost is its ``wall_clock_s`` (training and evaluation, summed over resumed segments) in hours on its
    device: GPU-h on a GPU (one per job), CPU-h = hours x ``threads`` (the CPU threads the workflow gives a job) on
    CPU. Returns, per unit present, the number of runs and the mean and total hours.
    """
    seconds = pd.to_numeric(status["wall_clock_s"], errors="coerce")
    units = status["device"].map(cost_unit)
    cost = {}
    for unit in COST_UNITS:
        hours = seconds[seconds.notna() & (units == unit)] / 3600 * (1 if unit == "GPU-h" else threads)
        if len(hours):
            cost[unit] = {"runs": len(hours), "mean": float(hours.mean()), "total": float(hours.sum())}
    return cost


# --------------------------------------------------------------------------------------------- data shaping
def run_finals(
    exp: studylib.Experiment, long: pd.DataFrame, status: pd.DataFrame
) -> tuple[dict[tuple[str, str], dict[str, Any]], pd.DataFrame]:
    """For every (label, task) of the experiment: per-seed final scores and why any expected seed is absent.

    A run counts when it finished (runs.csv status ok), reached the experiment's budget, and its last evaluation at
    or before the budget has a finite score. Returns that table and the evaluation rows of the counted runs.
    """
    status_of = {(r.algorithm, r.task, int(r.seed)): r for r in status.itertuples(index=False)}
    rows = long[long["step"] <= exp.steps]
    groups = {key: g.sort_values("step") for key, g in rows.groupby(["algorithm", "task", "seed"])}
    finals: dict[tuple[str, str], dict[str, Any]] = {}
    kept = []
    for label, tasks in exp.coverage.items():
        for task in tasks:
            entry: dict[str, Any] = {"expected": list(exp.seeds), "raw": {}, "normalised": {}, "step": {}, "absent": {}}
            for seed in exp.seeds:
                record = status_of.get((label, task, seed))
                evals = groups.get((label, task, seed))
                if record is None or record.status == "missing":
                    entry["absent"][seed] = "missing (not trained or not finished)"
                elif record.status in ("running", "resumable"):
                    entry["absent"][seed] = f"{record.status} ({record.detail})"
                elif record.status != "ok":
                    entry["absent"][seed] = f"failed ({record.detail})"
                elif record.total_steps < exp.steps:
                    entry["absent"][seed] = f"failed (trained to {int(record.total_steps)} < {exp.steps} steps)"
                elif evals is None or evals.empty:
                    entry["absent"][seed] = f"failed (no evaluation at or before {exp.steps} steps)"
                elif not math.isfinite(evals["score"].iloc[-1]):
                    entry["absent"][seed] = f"failed (non-finite score at step {int(evals['step'].iloc[-1])})"
                else:
                    last = evals.iloc[-1]
                    entry["raw"][seed] = float(last["score"])
                    entry["normalised"][seed] = float(last["normalised"])
                    entry["step"][seed] = int(last["step"])
                    kept.append(evals)
            finals[(label, task)] = entry
    return finals, (pd.concat(kept, ignore_index=True) if kept else rows.iloc[:0])


def curves_of(
    rows: pd.DataFrame, label: str, tasks: list[str], seeds_per_task: dict[str, list[int]], column: str
) -> tuple[np.ndarray, np.ndarray]:
    """(steps, array (runs, tasks, steps)) on the eval points every selected run has; runs are seeds_per_task."""
    sub = rows[(rows["algorithm"] == label) & rows["task"].isin(tasks)]
    common: set[int] | None = None
    for task in tasks:
        for seed in seeds_per_task[task]:
            steps = set(sub[(sub["task"] == task) & (sub["seed"] == seed)]["step"].astype(int))
            common = steps if common is None else common & steps
    grid = np.array(sorted(common or ()), dtype=int)
    n = len(seeds_per_task[tasks[0]])
    values = np.full((n, len(tasks), grid.size), np.nan)
    for j, task in enumerate(tasks):
        for i, seed in enumerate(seeds_per_task[task]):
            run = sub[(sub["task"] == task) & (sub["seed"] == seed)].set_index("step")[column]
            values[i, j] = run.loc[grid].to_numpy(dtype=float)
    return grid, values


def _triple(point: Any, lo: Any, hi: Any) -> list[float | None]:
    return [_num(point), _num(lo), _num(hi)]


def _num(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# -------------------------------------------------------------------------------------------- experiment
def experiment_stats(
    study: studylib.Study, exp: studylib.Experiment, long: pd.DataFrame, status: pd.DataFrame
) -> dict[str, Any]:
    """Everything the tables and plots of one experiment show (JSON-serialisable)."""
    boot = study.bootstrap
    seed, conf = boot["seed"], boot["confidence"]
    finals, rows = run_finals(exp, long, status)
    result: dict[str, Any] = {
        "study": study.name,
        "experiment": exp.name,
        "title": exp.title,
        "steps": exp.steps,
        "focus": study.focus,
        "labels": exp.labels,
        "names": study.names,
        "algos": {label: study.data["algorithms"][label]["algo"] for label in exp.labels},
        "overrides": {label: study.data["algorithms"][label].get("set", {}) for label in exp.labels},
        "bootstrap": {**boot, "method": "percentile", "rliable": importlib.metadata.version("rliable")},
        "threads": study.data["resources"]["threads"],
        "suites": {},
    }
    for suite in exp.suites():
        tasks = exp.suite_tasks(suite)
        block: dict[str, Any] = {
            "tasks": tasks,
            "normalisation": NORMALISATION_TEXT[suite],
            "metric": "success" if suite == "myo" else "return",
            "per_task": {},
            "aggregate": {},
            "poi": {},
            "profiles": {},
            "curves": {},
            "task_curves": {},
            "cost": {},
        }
        matrices: dict[str, np.ndarray] = {}
        selections: dict[str, dict[str, list[int]]] = {}
        for label in exp.labels:
            covered = [t for t in tasks if t in exp.coverage[label]]
            if not covered:
                continue
            per_task = _per_task(finals, label, covered, boot)
            block["per_task"][label] = per_task
            block["cost"][label] = _cost(status, label, covered, exp.seeds, result["threads"])
            block["task_curves"][label] = _task_curves(rows, label, covered, finals, boot)
            block["aggregate"][label], selection = _aggregate_entry(finals, label, tasks, covered, boot)
            if selection is not None:
                selections[label] = selection
                matrices[label] = _matrix(finals, label, selection)
        for label, selection in selections.items():
            grid, values = curves_of(rows, label, tasks, selection, "normalised")
            if grid.size:
                point, lo, hi = interval(values, iqm_curve, boot["curve_reps"], seed, conf)
                block["curves"][label] = {
                    "steps": grid.tolist(),
                    "iqm": [_num(v) for v in point],
                    "lo": [_num(v) for v in lo],
                    "hi": [_num(v) for v in hi],
                }
        if matrices:
            low = min(0.0, min(float(m.min()) for m in matrices.values()))
            high = max(1.0, max(float(m.max()) for m in matrices.values()))
            taus = np.linspace(low, high, PROFILE_POINTS)
            block["profiles"]["taus"] = taus.tolist()
            for label, matrix in matrices.items():
                prof, lo, hi = profile(matrix, taus, boot["profile_reps"], seed, conf)
                block["profiles"][label] = {"profile": prof.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
        block["poi"] = _poi(finals, study.focus, exp, tasks, boot)
        result["suites"][suite] = block
    return result


def _cost(status: pd.DataFrame, label: str, tasks: list[str], seeds: tuple[int, ...], threads: int) -> dict:
    runs = status[(status["algorithm"] == label) & status["task"].isin(tasks) & status["seed"].isin(seeds)]
    return compute_cost(runs, threads)


def _first_seeds(finals: dict[tuple[str, str], dict[str, Any]], label: str, tasks: list[str], n: int) -> dict:
    """The first ``n`` finished seeds of every task (tasks are independent strata, so rows need not share seeds)."""
    return {task: sorted(finals[(label, task)]["raw"])[:n] for task in tasks}


def _matrix(finals: dict[tuple[str, str], dict[str, Any]], label: str, selection: dict[str, list[int]]) -> np.ndarray:
    """(runs, tasks) normalised final scores of the selected seeds."""
    tasks = list(selection)
    n = len(selection[tasks[0]])
    return np.array([[finals[(label, t)]["normalised"][selection[t][i]] for t in tasks] for i in range(n)])


def _per_task(
    finals: dict[tuple[str, str], dict[str, Any]], label: str, tasks: list[str], boot: dict[str, Any]
) -> dict[str, Any]:
    """Raw-unit statistics per task; tasks with the same number of finished seeds share one bootstrap call."""
    out: dict[str, Any] = {}
    by_count: dict[int, list[str]] = {}
    for task in tasks:
        entry = finals[(label, task)]
        raw = np.array(list(entry["raw"].values()))
        out[task] = {
            "seeds_expected": len(entry["expected"]),
            "seeds_found": len(raw),
            "seeds": sorted(entry["raw"]),
            "absent": {str(k): v for k, v in sorted(entry["absent"].items())},
            "final_steps": sorted(set(entry["step"].values())),
            "scores": [entry["raw"][s] for s in sorted(entry["raw"])],
            "iqm": [None, None, None],
            "mean": _num(raw.mean()) if raw.size else None,
            "median": _num(np.median(raw)) if raw.size else None,
            "std": _num(raw.std(ddof=1)) if raw.size > 1 else None,
        }
        if raw.size:
            by_count.setdefault(raw.size, []).append(task)
    for group in by_count.values():
        matrix = np.array([[finals[(label, t)]["raw"][s] for s in sorted(finals[(label, t)]["raw"])] for t in group]).T
        point, lo, hi = interval(matrix, iqm_along_runs, boot["reps"], boot["seed"], boot["confidence"])
        for j, task in enumerate(group):
            out[task]["iqm"] = _triple(point[j], lo[j], hi[j])
    return out


def _task_curves(
    rows: pd.DataFrame,
    label: str,
    tasks: list[str],
    finals: dict[tuple[str, str], dict[str, Any]],
    boot: dict[str, Any],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task in tasks:
        seeds = sorted(finals[(label, task)]["raw"])
        if not seeds:
            continue
        grid, values = curves_of(rows, label, [task], {task: seeds}, "score")
        if not grid.size:
            continue
        point, lo, hi = interval(values, iqm_curve, boot["curve_reps"], boot["seed"], boot["confidence"])
        out[task] = {
            "steps": grid.tolist(),
            "iqm": [_num(v) for v in point],
            "lo": [_num(v) for v in lo],
            "hi": [_num(v) for v in hi],
            "seeds": len(seeds),
        }
    return out


def _aggregate_entry(
    finals: dict[tuple[str, str], dict[str, Any]],
    label: str,
    tasks: list[str],
    covered: list[str],
    boot: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, list[int]] | None]:
    """Suite aggregate of one label, or the reason it has none; returns the seeds used per task."""
    counts = {t: len(finals[(label, t)]["raw"]) for t in covered}
    entry: dict[str, Any] = {
        "tasks_covered": len(covered),
        "tasks_total": len(tasks),
        "seeds_expected": max(len(finals[(label, t)]["expected"]) for t in covered),
        "runs_per_task": None,
        "metrics": {},
        "note": "",
    }
    if len(covered) < len(tasks):
        entry["note"] = f"runs on {len(covered)} of {len(tasks)} tasks: not aggregated (see per-task table)"
        return entry, None
    if min(counts.values()) == 0:
        empty = [t for t, c in counts.items() if c == 0]
        entry["note"] = f"no finished seed on {', '.join(empty)}: not aggregated"
        return entry, None
    n = min(counts.values())
    selection = _first_seeds(finals, label, tasks, n)
    if len(set(counts.values())) > 1:
        entry["note"] = (
            f"seed counts differ across tasks ({min(counts.values())}-{max(counts.values())}); "
            f"the aggregate uses the first {n} finished seeds of every task"
        )
    matrix = _matrix(finals, label, selection)
    point, lo, hi = interval(matrix, aggregate_metrics, boot["reps"], boot["seed"], boot["confidence"])
    entry["runs_per_task"] = n
    entry["metrics"] = {name: _triple(point[k], lo[k], hi[k]) for k, name in enumerate(METRICS)}
    return entry, selection


def _poi(
    finals: dict[tuple[str, str], dict[str, Any]],
    focus: str,
    exp: studylib.Experiment,
    tasks: list[str],
    boot: dict[str, Any],
) -> dict[str, Any]:
    """P(focus > other) over the tasks both labels ran with at least one finished seed."""
    out: dict[str, Any] = {}
    if focus not in exp.coverage:
        return out
    for label in exp.labels:
        if label == focus:
            continue
        shared = [
            t
            for t in tasks
            if t in exp.coverage[focus]
            and t in exp.coverage[label]
            and finals[(focus, t)]["raw"]
            and finals[(label, t)]["raw"]
        ]
        if not shared:
            continue
        n_x = min(len(finals[(focus, t)]["raw"]) for t in shared)
        n_y = min(len(finals[(label, t)]["raw"]) for t in shared)
        x = _matrix(finals, focus, _first_seeds(finals, focus, shared, n_x))
        y = _matrix(finals, label, _first_seeds(finals, label, shared, n_y))
        point, lo, hi = interval((x, y), probability_of_improvement, boot["poi_reps"], boot["seed"], boot["confidence"])
        out[label] = {"value": _triple(point[0], lo[0], hi[0]), "tasks": shared, "runs": [n_x, n_y]}
    return out


# --------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--long", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    study = studylib.load_study(args.study, check_registry=False)
    exp = next(e for e in study.experiments if e.name == args.experiment)
    long = pd.read_csv(args.long)
    status = pd.read_csv(args.status)
    stats = experiment_stats(study, exp, long, status)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(stats, indent=1) + "\n")


if __name__ == "__main__":
    main()
