"""Plots of one experiment (PNG and PDF) from its statistics (aggregate.py).

    python workflow/scripts/make_plots.py --stats results/quick/stats/main.json --prefix results/quick/plots/main

Writes ``<prefix>_<kind>.{png,pdf}`` for kind in
interval_estimates (IQM / median / mean / optimality gap per suite with CIs), sample_efficiency (aggregate IQM of
normalised scores over env steps), learning_curves (per-task IQM of raw scores over env steps, one panel per task),
performance_profiles (fraction of runs above each normalised score), poi (probability of improvement of the focus
label over each other label). Colours are fixed per label across every plot of a study; algorithms appear under
their display names (studylib.display_name). Env-step axes read 500, 25k, 1M; a dotted line marks the published SAC
score (normalised 1.0) on Gym axes and a dashed one P = 0.5 (no preference) on probability of improvement.
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
from matplotlib.ticker import FuncFormatter
from rliable import plot_utils

METRICS = ("IQM", "Median", "Mean", "Optimality gap")
#: Normalised scores with a meaning worth a line: Gym's normalisation maps the published SAC return to 1.
REFERENCE_SCORES = {"gym": (1.0, "published SAC (1.0)")}
TITLE_POINTS = 10


def label_colors(labels: list[str]) -> dict[str, Any]:
    palette = sns.color_palette("colorblind" if len(labels) <= 10 else "husl", n_colors=len(labels))
    return dict(zip(labels, palette, strict=True))


def _nan(values: list[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _empty(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, textwrap.fill(text, 40), ha="center", va="center", fontsize=9, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _bar_rows(ax: plt.Axes, labels: list[str]) -> None:
    """Rows of interval bars from the top, with a margin so that a single bar does not fill the panel."""
    ax.set_ylim(len(labels) - 0.4, -0.6)


def _interval_bar(ax: plt.Axes, y: float, point: float, lo: float, hi: float, color: Any) -> None:
    """CI as a bar, the point estimate as a tick; degenerate (zero-width) intervals stay visible as a dot."""
    ax.barh(y, hi - lo, left=lo, height=0.6, color=color, alpha=0.75)
    ax.vlines(point, y - 0.3, y + 0.3, color="black", linewidth=1.2)
    if hi - lo <= 0:
        ax.plot(point, y, "o", color=color, markeredgecolor="black", markersize=6)


def format_steps(value: float, _position: int | None = None) -> str:
    """An env-step tick label: 0, 500, 25k, 2.5k, 1M, 1.5M (no offset or 1e3 multiplier)."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def steps_axis(ax: plt.Axes) -> None:
    """An env-step x axis: labelled, k/M ticks, light grid."""
    ax.set_xlabel("env steps")
    ax.xaxis.set_major_formatter(FuncFormatter(format_steps))
    ax.grid(True, alpha=0.25)


def _reference_score(ax: plt.Axes, suite: str, axis: str) -> None:
    """The suite's meaningful normalised score as a dotted line (labelled, for a legend), if it has one."""
    if suite not in REFERENCE_SCORES:
        return
    value, label = REFERENCE_SCORES[suite]
    line = ax.axhline if axis == "y" else ax.axvline
    line(value, color="dimgrey", linestyle=":", linewidth=1.2, label=label, zorder=1)
    # Keep the line off the frame, where it would be hard to see.
    limits = ax.get_ylim if axis == "y" else ax.get_xlim
    set_limits = ax.set_ylim if axis == "y" else ax.set_xlim
    low, high = limits()
    set_limits(low, max(high, value + 0.04 * (high - low)))


def _save(fig: plt.Figure, prefix: Path, kind: str) -> plt.Figure:
    fig.savefig(f"{prefix}_{kind}.png", dpi=150, bbox_inches="tight")
    fig.savefig(f"{prefix}_{kind}.pdf", bbox_inches="tight")
    return fig


def _suptitle(fig: plt.Figure, stats: dict[str, Any], what: str) -> None:
    """What the figure shows, wrapped to the figure's width: a title wider than the axes would widen the saved
    (tight-bounding-box) image and leave the rest of it blank."""
    boot = stats["bootstrap"]
    text = (
        f"{what}: {stats['title']} ({stats['study']} study, ≤ {stats['steps']:,} env steps, "
        f"{boot['confidence']:.0%} bootstrap CIs)"
    )
    # An average character of the default sans-serif font is about 0.55 em wide.
    width = max(30, int(fig.get_figwidth() * 72 / (0.55 * TITLE_POINTS)))
    fig.suptitle(textwrap.fill(text, width), fontsize=TITLE_POINTS)


def _row_width(panels: int) -> float:
    """Width of a row of ``panels`` plots; at least 6 in so that a one-panel figure keeps a readable title."""
    return max(6.0, 4.8 * panels)


def interval_estimates(stats: dict[str, Any], colors: dict[str, Any], prefix: Path) -> plt.Figure:
    suites, names = list(stats["suites"]), stats["names"]
    rows_per_suite = max(2, len(stats["labels"]))
    fig, axes = plt.subplots(
        len(suites), 4, figsize=(13, 0.9 + len(suites) * (0.5 + 0.4 * rows_per_suite)), squeeze=False
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
            if metric != "Optimality gap":
                _reference_score(ax, suite, "x")
            ax.set_yticks(range(len(labels)), [names[label] for label in labels] if col == 0 else [""] * len(labels))
            _bar_rows(ax, labels)
            ax.set_title(metric if row == 0 else "", fontsize=10)
            ax.grid(True, axis="x", alpha=0.25)
            if col == 0:
                ax.set_ylabel(studylib.SUITE_TITLES[suite])
            if row == len(suites) - 1:
                ax.set_xlabel("normalised score")
    _suptitle(fig, stats, "Aggregate metrics")
    fig.tight_layout()
    return _save(fig, prefix, "interval_estimates")


def sample_efficiency(stats: dict[str, Any], colors: dict[str, Any], prefix: Path) -> plt.Figure:
    suites, names = list(stats["suites"]), stats["names"]
    fig, axes = plt.subplots(1, len(suites), figsize=(_row_width(len(suites)), 3.8), squeeze=False)
    for ax, suite in zip(axes[0], suites, strict=True):
        curves = stats["suites"][suite]["curves"]
        if not curves:
            _empty(ax, "no label covers every task")
            continue
        for label, curve in curves.items():
            steps = np.array(curve["steps"])
            ax.plot(steps, _nan(curve["iqm"]), color=colors[label], label=names[label], linewidth=1.8)
            ax.fill_between(steps, _nan(curve["lo"]), _nan(curve["hi"]), color=colors[label], alpha=0.2)
        _reference_score(ax, suite, "y")
        n_tasks = len(stats["suites"][suite]["tasks"])
        ax.set_title(f"{studylib.SUITE_TITLES[suite]} ({n_tasks} task{'s' * (n_tasks > 1)})", fontsize=10)
        ax.set_ylabel("IQM normalised score")
        steps_axis(ax)
        ax.legend(fontsize=8)
    _suptitle(fig, stats, "Sample efficiency")
    fig.tight_layout()
    return _save(fig, prefix, "sample_efficiency")


def learning_curves(stats: dict[str, Any], colors: dict[str, Any], prefix: Path) -> plt.Figure:
    names = stats["names"]
    panels = [(suite, task) for suite, block in stats["suites"].items() for task in block["tasks"]]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.0, 4.2 * cols), 0.6 + 3.2 * rows), squeeze=False)
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
            line_label = f"{names[label]} ({curve['seeds']})"
            ax.plot(steps, _nan(curve["iqm"]), color=colors[label], label=line_label, linewidth=1.6)
            ax.fill_between(steps, _nan(curve["lo"]), _nan(curve["hi"]), color=colors[label], alpha=0.2)
            drawn = True
        if not drawn:
            _empty(ax, f"{task}: no finished run")
            continue
        ax.set_title(task, fontsize=10)
        ax.set_ylabel("IQM success rate" if block["metric"] == "success" else "IQM return")
        steps_axis(ax)
        ax.legend(fontsize=7, title="algorithm (seeds)", title_fontsize=7)
    _suptitle(fig, stats, "Per-task learning curves")
    fig.tight_layout()
    return _save(fig, prefix, "learning_curves")


def performance_profiles(stats: dict[str, Any], colors: dict[str, Any], prefix: Path) -> plt.Figure:
    suites, names = list(stats["suites"]), stats["names"]
    fig, axes = plt.subplots(1, len(suites), figsize=(_row_width(len(suites)), 3.8), squeeze=False)
    for ax, suite in zip(axes[0], suites, strict=True):
        profiles = dict(stats["suites"][suite]["profiles"])
        taus = np.array(profiles.pop("taus", []))
        if not profiles:
            _empty(ax, "no label covers every task")
            continue
        # rliable labels each curve with its dictionary key.
        plot_utils.plot_performance_profiles(
            {names[k]: np.array(v["profile"]) for k, v in profiles.items()},
            taus,
            performance_profile_cis={names[k]: (np.array(v["lo"]), np.array(v["hi"])) for k, v in profiles.items()},
            colors={names[k]: colors[k] for k in profiles},
            ax=ax,
            xlabel=r"normalised score $\tau$",
            ylabel=r"fraction of runs with score $> \tau$",
            labelsize="medium",
            ticklabelsize="small",
        )
        _reference_score(ax, suite, "x")
        ax.set_title(studylib.SUITE_TITLES[suite], fontsize=10)
        ax.legend(fontsize=8)
    _suptitle(fig, stats, "Performance profiles")
    fig.tight_layout()
    return _save(fig, prefix, "performance_profiles")


def poi(stats: dict[str, Any], colors: dict[str, Any], prefix: Path) -> plt.Figure:
    suites, names, focus = list(stats["suites"]), stats["names"], stats["focus"]
    fig, axes = plt.subplots(
        1, len(suites), figsize=(_row_width(len(suites)), 1.3 + 0.45 * len(stats["labels"])), squeeze=False
    )
    for ax, suite in zip(axes[0], suites, strict=True):
        entries = stats["suites"][suite]["poi"]
        if not entries:
            _empty(ax, f"no comparison with {names[focus]}")
            continue
        labels = list(entries)
        for y, label in enumerate(labels):
            point, lo, hi = entries[label]["value"]
            _interval_bar(ax, y, point, lo, hi, colors[label])
        ax.axvline(0.5, color="dimgrey", linestyle="--", linewidth=1)
        ax.set_xlim(-0.03, 1.03)
        _bar_rows(ax, labels)
        ax.set_yticks(range(len(labels)), [f"P({names[focus]} > {names[label]})" for label in labels])
        ax.set_xlabel("probability of improvement (0.5: no preference)")
        ax.set_title(studylib.SUITE_TITLES[suite], fontsize=10)
        ax.grid(True, axis="x", alpha=0.25)
    _suptitle(fig, stats, "Probability of improvement")
    fig.tight_layout()
    return _save(fig, prefix, "poi")


PLOTS = (interval_estimates, sample_efficiency, learning_curves, performance_profiles, poi)


def write_plots(stats: dict[str, Any], prefix: str | Path, labels: list[str] | None = None) -> None:
    """All plot kinds; ``labels`` (the study's label order) fixes the colours across experiments."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    colors = label_colors(labels or stats["labels"])
    for plot in PLOTS:
        plt.close(plot(stats, colors, prefix))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stats", required=True)
    parser.add_argument("--prefix", required=True, help="e.g. results/quick/plots/main")
    parser.add_argument("--labels", nargs="*", help="every label of the study, in order (stable colours)")
    args = parser.parse_args(argv)
    write_plots(json.loads(Path(args.stats).read_text()), args.prefix, args.labels)


if __name__ == "__main__":
    main()
