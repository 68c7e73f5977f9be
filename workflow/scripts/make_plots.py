"""Plots of one experiment (PNG and PDF) from its statistics (aggregate.py).

    python workflow/scripts/make_plots.py --stats results/quick/stats/main.json --prefix results/quick/plots/main

Writes ``<prefix>_<kind>.{png,pdf}`` for kind in
interval_estimates (IQM / median / mean / optimality gap per suite with CIs), sample_efficiency (aggregate IQM of
normalised scores over env steps), learning_curves (per-task IQM of raw scores over env steps, one panel per task),
performance_profiles (fraction of runs above each normalised score), poi (probability of improvement of the focus
label over each other label). Colours are fixed per label across every plot of a study.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import studylib
from rliable import plot_utils

METRICS = ("IQM", "Median", "Mean", "Optimality gap")


def label_colors(labels: list[str]) -> dict[str, Any]:
    palette = sns.color_palette("colorblind" if len(labels) <= 10 else "husl", n_colors=len(labels))
    return dict(zip(labels, palette, strict=True))


def _nan(values: list[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _empty(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, textwrap.fill(text, 40), ha="center", va="center", fontsize=9, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _interval_bar(ax: plt.Axes, y: float, point: float, lo: float, hi: float, color: Any) -> None:
    """CI as a bar, the point estimate as a tick; degenerate (zero-width) intervals stay visible as a dot."""
    ax.barh(y, hi - lo, left=lo, height=0.6, color=color, alpha=0.75)
    ax.vlines(point, y - 0.3, y + 0.3, color="black", linewidth=1.2)
    if hi - lo <= 0:
        ax.plot(point, y, "o", color=color, markeredgecolor="black", markersize=6)


def _steps_axis(ax: plt.Axes) -> None:
    ax.set_xlabel("env steps")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    ax.grid(True, alpha=0.25)


def _save(fig: plt.Figure, prefix: Path, kind: str) -> None:
    fig.savefig(f"{prefix}_{kind}.png", dpi=150, bbox_inches="tight")
    fig.savefig(f"{prefix}_{kind}.pdf", bbox_inches="tight")
    plt.close(fig)


def _suptitle(fig: plt.Figure, stats: dict[str, Any], what: str) -> None:
    boot = stats["bootstrap"]
    fig.suptitle(
        f"{stats['title']} — {what} ({stats['study']} study, ≤ {stats['steps']:,} steps; "
        f"{boot['confidence']:.0%} stratified-bootstrap CIs)",
        fontsize=10,
    )


def interval_estimates(stats: dict[str, Any], colors: dict[str, Any], prefix: Path) -> None:
    suites = list(stats["suites"])
    fig, axes = plt.subplots(
        len(suites), 4, figsize=(13, 0.5 + 1.4 * max(2, len(stats["labels"])) * len(suites) / 2), squeeze=False
    )
    for row, suite in enumerate(suites):
        entries = {k: v for k, v in stats["suites"][suite]["aggregate"].items() if v["metrics"]}
        for col, metric in enumerate(METRICS):
            ax = axes[row, col]
            if not entries:
                _empty(ax, "no label covers every task")
                continue
            labels = list(entries)
            for y, label in enumerate(labels):
                point, lo, hi = entries[label]["metrics"][metric]
                _interval_bar(ax, y, point, lo, hi, colors[label])
            ax.set_yticks(range(len(labels)), labels if col == 0 else [""] * len(labels))
            ax.invert_yaxis()
            ax.set_title(metric if row == 0 else "", fontsize=10)
            ax.grid(True, axis="x", alpha=0.25)
            if col == 0:
                ax.set_ylabel(studylib.SUITE_TITLES[suite])
            if row == len(suites) - 1:
                ax.set_xlabel("normalised score")
    _suptitle(fig, stats, "aggregate metrics")
    fig.tight_layout()
    _save(fig, prefix, "interval_estimates")


def sample_efficiency(stats: dict[str, Any], colors: dict[str, Any], prefix: Path) -> None:
    suites = list(stats["suites"])
    fig, axes = plt.subplots(1, len(suites), figsize=(4.8 * len(suites), 3.6), squeeze=False)
    for ax, suite in zip(axes[0], suites, strict=True):
        curves = stats["suites"][suite]["curves"]
        if not curves:
            _empty(ax, "no label covers every task")
            continue
        for label, curve in curves.items():
            steps = np.array(curve["steps"])
            ax.plot(steps, _nan(curve["iqm"]), color=colors[label], label=label, linewidth=1.8)
            ax.fill_between(steps, _nan(curve["lo"]), _nan(curve["hi"]), color=colors[label], alpha=0.2)
        n_tasks = len(stats["suites"][suite]["tasks"])
        ax.set_title(f"{studylib.SUITE_TITLES[suite]} ({n_tasks} task{'s' * (n_tasks > 1)})", fontsize=10)
        ax.set_ylabel("IQM normalised score")
        _steps_axis(ax)
        ax.legend(fontsize=8)
    _suptitle(fig, stats, "sample efficiency")
    fig.tight_layout()
    _save(fig, prefix, "sample_efficiency")


def learning_curves(stats: dict[str, Any], colors: dict[str, Any], prefix: Path) -> None:
    panels = [(suite, task) for suite, block in stats["suites"].items() for task in block["tasks"]]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (suite, task) in zip(axes.flat, panels, strict=False):
        block = stats["suites"][suite]
        drawn = False
        for label, curves in block["task_curves"].items():
            if task not in curves:
                continue
            curve = curves[task]
            steps = np.array(curve["steps"])
            ax.plot(steps, _nan(curve["iqm"]), color=colors[label], label=f"{label} ({curve['seeds']})", linewidth=1.6)
            ax.fill_between(steps, _nan(curve["lo"]), _nan(curve["hi"]), color=colors[label], alpha=0.2)
            drawn = True
        if not drawn:
            _empty(ax, f"{task}: no finished run")
            continue
        ax.set_title(task, fontsize=10)
        ax.set_ylabel("IQM success rate" if block["metric"] == "success" else "IQM return")
        _steps_axis(ax)
        ax.legend(fontsize=7, title="label (seeds)", title_fontsize=7)
    _suptitle(fig, stats, "per-task learning curves")
    fig.tight_layout()
    _save(fig, prefix, "learning_curves")


def performance_profiles(stats: dict[str, Any], colors: dict[str, Any], prefix: Path) -> None:
    suites = list(stats["suites"])
    fig, axes = plt.subplots(1, len(suites), figsize=(4.8 * len(suites), 3.6), squeeze=False)
    for ax, suite in zip(axes[0], suites, strict=True):
        profiles = dict(stats["suites"][suite]["profiles"])
        taus = np.array(profiles.pop("taus", []))
        if not profiles:
            _empty(ax, "no label covers every task")
            continue
        plot_utils.plot_performance_profiles(
            {k: np.array(v["profile"]) for k, v in profiles.items()},
            taus,
            performance_profile_cis={k: (np.array(v["lo"]), np.array(v["hi"])) for k, v in profiles.items()},
            colors={k: colors[k] for k in profiles},
            ax=ax,
            xlabel=r"normalised score $\tau$",
            ylabel=r"fraction of runs with score $> \tau$",
            labelsize="medium",
            ticklabelsize="small",
        )
        ax.set_title(studylib.SUITE_TITLES[suite], fontsize=10)
        ax.legend(fontsize=8)
    _suptitle(fig, stats, "performance profiles")
    fig.tight_layout()
    _save(fig, prefix, "performance_profiles")


def poi(stats: dict[str, Any], colors: dict[str, Any], prefix: Path) -> None:
    suites = list(stats["suites"])
    fig, axes = plt.subplots(
        1, len(suites), figsize=(4.8 * len(suites), 0.8 + 0.5 * len(stats["labels"])), squeeze=False
    )
    focus = stats["focus"]
    for ax, suite in zip(axes[0], suites, strict=True):
        entries = stats["suites"][suite]["poi"]
        if not entries:
            _empty(ax, f"no comparison with {focus}")
            continue
        labels = list(entries)
        for y, label in enumerate(labels):
            point, lo, hi = entries[label]["value"]
            _interval_bar(ax, y, point, lo, hi, colors[label])
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(-0.03, 1.03)
        ax.invert_yaxis()
        ax.set_yticks(range(len(labels)), [f"P({focus} > {label})" for label in labels])
        ax.set_xlabel("probability of improvement")
        ax.set_title(studylib.SUITE_TITLES[suite], fontsize=10)
        ax.grid(True, axis="x", alpha=0.25)
    _suptitle(fig, stats, "probability of improvement")
    fig.tight_layout()
    _save(fig, prefix, "poi")


def write_plots(stats: dict[str, Any], prefix: str | Path, labels: list[str] | None = None) -> None:
    """All plot kinds; ``labels`` (the study's label order) fixes the colours across experiments."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    colors = label_colors(labels or stats["labels"])
    for plot in (interval_estimates, sample_efficiency, learning_curves, performance_profiles, poi):
        plot(stats, colors, prefix)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stats", required=True)
    parser.add_argument("--prefix", required=True, help="e.g. results/quick/plots/main")
    parser.add_argument("--labels", nargs="*", help="every label of the study, in order (stable colours)")
    args = parser.parse_args(argv)
    write_plots(json.loads(Path(args.stats).read_text()), args.prefix, args.labels)


if __name__ == "__main__":
    main()
