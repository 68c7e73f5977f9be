"""Time and memory of the study aggregation at the size of the paper's study, on synthetic scores.

    .venv/bin/python benchmarks/aggregate_benchmark.py            # writes results/benchmarks/aggregate.md

A synthetic study with 12 algorithm labels x 21 tasks (the 21 tasks of the authors' released curves: 15 DMC,
2 Gym, 4 MyoSuite) x 10 seeds x 42 evaluation points (step 1 and every 24k steps to 984k), every label on every
task (the most expensive case: every label gets suite aggregates, curves, profiles and a probability of
improvement). It runs the workflow's own code for the steps after training: statistics with rliable at the
study schema's default bootstrap replications (workflow/scripts/aggregate.py), tables (make_tables.py) and plots
(make_plots.py). Reported: wall and CPU seconds per step and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import aggregate  # noqa: E402
import make_plots  # noqa: E402
import make_tables  # noqa: E402
import studylib  # noqa: E402

LABELS = ["dime", "bro", "bro-fast", "crossq", "qsm", "diffusion-ql", "consistency-ac", "dipo", "qvpo", "dacer",
          "sac", "dime-gauss"]  # fmt: skip
TASKS = [
    *(f"dmc/{t}" for t in ("acrobot-swingup", "cheetah-run", "dog-run", "dog-stand", "dog-trot", "dog-walk",
                           "finger-turn_hard", "fish-swim", "hopper-hop", "humanoid-run", "humanoid-stand",
                           "humanoid-walk", "pendulum-swingup", "quadruped-run", "walker-run")),
    "gym/Ant-v4",
    "gym/Humanoid-v4",
    *(f"myo/{t}-hard" for t in ("obj-hold", "reach", "key-turn", "pen-twirl")),
]  # fmt: skip
SEEDS = 10
STEPS = [1, *range(24000, 1_000_000, 24000)]  # 42 points, the released curves' grid


def synthetic_study(directory: Path) -> Path:
    """The study file: schema defaults for the bootstrap (what a user gets without a `bootstrap:` section)."""
    study = {
        "description": "synthetic paper-size study for benchmarks/aggregate_benchmark.py",
        "seeds": SEEDS,
        "eval_every": 24000,
        "algorithms": {label: {"algo": "sac"} for label in LABELS},
        "experiments": {"main": {"title": "Synthetic paper-size study", "tasks": TASKS, "algorithms": LABELS,
                                 "steps": 1_000_000}},
    }  # fmt: skip
    path = directory / "synthetic.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def synthetic_scores(normalisation: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Saturating learning curves with per-(label, task) skill and per-seed noise, in each suite's raw units."""
    rng = np.random.default_rng(0)
    steps = np.array(STEPS, dtype=float)
    frames, status = [], []
    for label in LABELS:
        for task in TASKS:
            suite = studylib.suite_of(task)
            skill = rng.uniform(0.2, 0.95)
            for seed in range(SEEDS):
                progress = skill * (1 - np.exp(-steps / rng.uniform(1.5e5, 4e5)))
                normalised = np.clip(progress + rng.normal(0, 0.05, steps.size), -0.1, 1.2)
                if suite == "myo":
                    score = np.round(np.clip(normalised, 0, 1) * 5) / 5  # 5 episodes -> multiples of 0.2
                elif suite == "dmc":
                    score = normalised * 1000
                else:
                    ref = normalisation["gym"][task]
                    score = ref["random"] + normalised * (ref["reference"] - ref["random"])
                frames.append(
                    pd.DataFrame({"algorithm": label, "task": task, "seed": seed, "step": STEPS, "score": score,
                                  "normalised": [studylib.normalise(task, s, normalisation) for s in score]})
                )  # fmt: skip
                status.append({"algorithm": label, "task": task, "seed": seed, "status": "ok", "detail": "",
                               "total_steps": 1_000_000})  # fmt: skip
    return pd.concat(frames, ignore_index=True), pd.DataFrame(status)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def timed(name: str, timings: list, func, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = func(*args)
    timings.append((name, time.perf_counter() - wall, time.process_time() - cpu, peak_rss_mb()))
    print(f"{name}: {timings[-1][1]:.1f} s", file=sys.stderr)
    return result


def report(study: studylib.Study, timings: list, baseline_mb: float, rows: int, load: tuple, out: Path) -> str:
    boot = study.bootstrap
    lines = [
        "# Aggregation benchmark (paper-size synthetic study)",
        "",
        f"Produced by `benchmarks/aggregate_benchmark.py` on {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        f"Synthetic study: {len(LABELS)} algorithm labels x {len(TASKS)} tasks (15 DMC, 2 Gym, 4 MyoSuite) x "
        f"{SEEDS} seeds x {len(STEPS)} evaluation points = {rows:,} evaluation rows; every label on every task. "
        f"Bootstrap replications (study schema defaults): {boot['reps']:,} for aggregate and per-task intervals, "
        f"{boot['curve_reps']:,} per point of every curve, {boot['poi_reps']:,} for probability of improvement, "
        f"{boot['profile_reps']:,} for performance profiles; percentile intervals, rliable "
        f"{importlib.metadata.version('rliable')}.",
        "",
        "| Step | Wall (s) | CPU (s) | Peak RSS so far (MB) |",
        "|:--|--:|--:|--:|",
    ]
    for name, wall, cpu, rss in timings:
        lines.append(f"| {name} | {wall:.1f} | {cpu:.1f} | {rss:.0f} |")
    total_wall = sum(t[1] for t in timings)
    total_cpu = sum(t[2] for t in timings)
    lines += [
        f"| **total** | **{total_wall:.1f}** | **{total_cpu:.1f}** | **{timings[-1][3]:.0f}** |",
        "",
        f"Peak resident memory of the process: {timings[-1][3]:.0f} MB ({baseline_mb:.0f} MB after imports and "
        "building the synthetic scores, i.e. before aggregation).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}; one process, one thread "
        "of work. The machine was shared with other jobs: load average "
        f"{load[0]:.1f} at the start and {load[1]:.1f} at the end, so wall times are upper bounds (CPU times are "
        "the better measure).",
        "",
        f"Outputs (tables and plots of the synthetic study) were written to a temporary directory; this file: `{out}`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "aggregate.md")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    normalisation = studylib.load_normalisation(ROOT / "config" / "normalisation.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        study = studylib.load_study(synthetic_study(directory), normalisation, check_registry=False)
        long, status = synthetic_scores(normalisation)
        baseline = peak_rss_mb()
        timings: list = []
        stats = timed("statistics (aggregate.py)", timings, aggregate.experiment_stats, study,
                      study.experiments[0], long, status)  # fmt: skip
        timed("tables (make_tables.py)", timings, make_tables.write_tables, stats, directory / "tables" / "main")
        timed("plots (make_plots.py)", timings, make_plots.write_plots, stats, directory / "plots" / "main")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shown = args.out.resolve().relative_to(ROOT) if args.out.resolve().is_relative_to(ROOT) else args.out
    text = report(study, timings, baseline, len(long), (load_start, os.getloadavg()[0]), shown)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
