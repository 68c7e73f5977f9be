"""Reproduction check: every checked label's learning curves against the published curves of its algorithm.

    python workflow/scripts/reproduction.py --study config/studies/paper.yaml --long results/paper/scores_long.csv \
        --reference-config config/reference.yaml --reference-files results/paper/reference_files.json \
        --tables results/paper/tables --plots results/paper/plots

Which label is checked against which published source is the study's ``reproduction.references`` (default: dime,
bro, bro-fast, crossq, sac -> the source of the same name in config/reference.yaml); the files are the verified ones
the manifest of workflow/scripts/reference_data.py lists. For every (label, task) whose source has a curve:

* **Matching env steps.** The grids differ (DIME's curves every 24k, BRO's 25k, CrossQ's 2k, SAC's 16,666 / 50k /
  100k), so our step s and a published step r are the same point when each is the other's nearest evaluation and
  |s - r| <= grid / 2 (the source's grid). One published point pairs with at most one of ours.
* **Per matched step** (``tables/reproduction_steps.csv``): IQM over seeds with a percentile stratified-bootstrap CI
  on both sides (``bootstrap.curve_reps`` replications) and the step's verdict.
* **Verdict** at the last matched step (``bootstrap.reps`` replications): consistent (CIs overlap), lower / higher
  (disjoint), too early (the step is before ``reproduction.min_step``, or our runs end before the published curve
  starts). Rows without one say why: no published curve, not run, no common step, reference unavailable.
* Our column is the source's ``compare_with`` for the suite (BRO's MyoSuite success is any-step, so ``success_any``),
  else the study's score.

Outputs: ``tables/reproduction.{md,tex,csv}`` (one row per (label, task), protocol notes under it),
``tables/reproduction_summary.{md,csv}`` (verdicts, labels x tasks; CSV columns label, display_name, task, source,
verdict, step), ``tables/reproduction_steps.csv`` and ``plots/reproduction_<label>.{png,pdf}`` (an overlay per label
that runs a task with a published curve).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import reference_data
import studylib
from aggregate import interval, iqm_along_runs
from make_plots import label_colors
from make_tables import fmt_ci, html_page, to_html, to_latex, to_markdown

STEP_COLUMNS = ["label", "task", "source", "step", "reference_step", "ours", "ours_lo", "ours_hi", "theirs",
                "theirs_lo", "theirs_hi", "verdict"]  # fmt: skip
SUMMARY_COLUMNS = ["label", "display_name", "task", "source", "verdict", "step"]


@dataclass
class Check:
    """The comparison of one (label, task) with its published curve."""

    label: str
    task: str
    source: str
    verdict: str
    curve: str = ""  # the source's name for the task
    detail: str = ""
    seeds_ours: int = 0
    seeds_reference: int = 0
    step: int | None = None
    reference_step: int | None = None
    ours: list[float] = field(default_factory=list)  # IQM, lower, upper at the verdict step
    theirs: list[float] = field(default_factory=list)
    overlap: str = ""
    column: str = "score"
    steps: list[dict[str, Any]] = field(default_factory=list)  # one row per matched step
    plot: dict[str, Any] | None = None  # full curves with bands, for the overlay


# ---------------------------------------------------------------------------------------------- the check
def match_steps(ours: np.ndarray, theirs: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
    """Index pairs (i, j): our step i and their step j are each other's nearest and at most ``tolerance`` apart."""
    if len(ours) == 0 or len(theirs) == 0:
        return []
    pairs = []
    for i, step in enumerate(ours):
        j = int(np.argmin(np.abs(theirs - step)))
        if abs(int(theirs[j]) - int(step)) <= tolerance and int(np.argmin(np.abs(ours - theirs[j]))) == i:
            pairs.append((i, j))
    return pairs


def verdict(ours: list[float], theirs: list[float]) -> str:
    """consistent when the (point, lower, upper) intervals overlap, else lower / higher."""
    if ours[2] < theirs[1]:
        return "lower"
    if ours[1] > theirs[2]:
        return "higher"
    return "consistent"


def our_curves(long: pd.DataFrame, label: str, task: str, column: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(steps on which every finished seed evaluated, values (seeds, steps), seeds) of our runs."""
    rows = long[(long["algorithm"] == label) & (long["task"] == task)].dropna(subset=[column])
    seeds = sorted(int(s) for s in rows["seed"].unique())
    if not seeds:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0)), []
    per_seed = {s: rows[rows["seed"] == s].set_index("step")[column] for s in seeds}
    common = sorted(set.intersection(*(set(v.index) for v in per_seed.values())))
    values = np.array([per_seed[s].loc[common].to_numpy(dtype=float) for s in seeds]).reshape(len(seeds), -1)
    return np.array(common, dtype=np.int64), values, seeds


def check_task(
    study: studylib.Study,
    long: pd.DataFrame,
    reference: dict[str, Any],
    label: str,
    source_name: str,
    task: str,
    paths: dict[str, Path],
    failures: dict[str, str],
) -> Check:
    source = reference["sources"][source_name]
    entry = source["tasks"].get(task)
    check = Check(label, task, source_name, "no published curve")
    if entry is None:
        return check
    suite = studylib.suite_of(task)
    check.curve = entry["curve"]
    check.column = source.get("compare_with", {}).get(suite, "score")
    check.detail = "; ".join(n for n in (source["notes"].get(suite, ""), entry.get("note", "")) if n)
    steps, values, seeds = our_curves(long, label, task, check.column)
    check.seeds_ours = len(seeds)
    missing = [
        failures[f.relative]
        for f in reference_data.source_files(reference, source_name, task)
        if f.relative in failures
    ]
    if missing:
        check.verdict, check.detail = "reference unavailable", missing[0]
        return check
    try:
        ref_steps, ref_values = reference_data.load_curve(reference, source_name, task, paths)
    except reference_data.ReferenceDataError as error:
        check.verdict, check.detail = "reference unavailable", str(error)
        return check
    check.seeds_reference = ref_values.shape[0]
    if not seeds:
        check.verdict = "not run"
        return check
    grid = entry.get("grid", source["grid"])
    pairs = match_steps(steps, ref_steps, grid / 2)
    if not pairs:
        if steps[-1] < ref_steps[0]:
            check.verdict = "too early"
            check.detail = f"our runs end at {steps[-1]:,} env steps, the published curve starts at {ref_steps[0]:,}"
        else:
            check.verdict = "no common step"
        return check

    boot, min_step = study.bootstrap, study.data["reproduction"]["min_step"]
    seed, conf = boot["seed"], boot["confidence"]
    ours_curve = interval(values, iqm_along_runs, boot["curve_reps"], seed, conf)
    ref_curve = interval(ref_values, iqm_along_runs, boot["curve_reps"], seed, conf)
    judged = 0
    overlapping = 0
    for i, j in pairs:
        ours = [float(band[i]) for band in ours_curve]
        theirs = [float(band[j]) for band in ref_curve]
        step_verdict = "too early" if steps[i] < min_step else verdict(ours, theirs)
        if steps[i] >= min_step:
            judged += 1
            overlapping += step_verdict == "consistent"
        row = [label, task, source_name, int(steps[i]), int(ref_steps[j]), *ours, *theirs, step_verdict]
        check.steps.append(dict(zip(STEP_COLUMNS, row, strict=True)))
    last_ours, last_ref = pairs[-1]
    check.step, check.reference_step = int(steps[last_ours]), int(ref_steps[last_ref])
    check.ours = [float(v[0]) for v in interval(values[:, [last_ours]], iqm_along_runs, boot["reps"], seed, conf)]
    check.theirs = [float(v[0]) for v in interval(ref_values[:, [last_ref]], iqm_along_runs, boot["reps"], seed, conf)]
    check.overlap = f"{overlapping}/{judged}"
    if check.step < min_step:
        check.verdict = "too early"
        check.detail = "; ".join(n for n in (f"before min_step {min_step:,}", check.detail) if n)
    else:
        check.verdict = verdict(check.ours, check.theirs)
    check.plot = {"ours": (steps, *ours_curve), "theirs": (ref_steps, *ref_curve)}
    return check


def run_checks(
    study: studylib.Study, long: pd.DataFrame, reference: dict[str, Any], manifest: dict[str, Any]
) -> list[Check]:
    """One Check per (checked label, task it runs on), in study order."""
    paths = {e["file"]: Path(e["path"]) for e in manifest["files"] if e["status"] != "failed"}
    failures = {e["file"]: e["error"] for e in manifest["files"] if e["status"] == "failed"}
    for file in reference_data.needed_files(study, reference):
        if file.relative not in paths and file.relative not in failures:
            failures[file.relative] = (
                f"reference file {file.relative} is not in the fetched files (rerun fetch_reference)"
            )
    return [
        check_task(study, long, reference, label, source_name, task, paths, failures)
        for label, source_name in reference_data.checked_labels(study, reference).items()
        for task in reference_data.label_tasks(study, label)
    ]


# ------------------------------------------------------------------------------------------------- tables
def _decimals(check: Check) -> int:
    return 2 if check.column.startswith("success") or studylib.suite_of(check.task) == "myo" else 0


def caption(study: studylib.Study) -> str:
    boot, min_step = study.bootstrap, study.data["reproduction"]["min_step"]
    return (
        f"Reproduction check ({study.name} study): each checked label against the published curves of its algorithm "
        "(config/reference.yaml; files verified against their pinned SHA-256), at the last env step both evaluated. "
        "Steps match when each is the other's nearest evaluation and they are at most half the published grid apart "
        "(the published step in parentheses when it differs). IQM over seeds "
        f"[{boot['confidence']:.0%} CI] (seeds), percentile stratified bootstrap, {boot['reps']:,} replications "
        f"(curve points: {boot['curve_reps']:,}), np.random.seed({boot['seed']}) before every call. Overlap: matched "
        f"steps from {min_step:,} on whose CIs overlap. Verdict: consistent (CIs overlap), lower / higher (disjoint), "
        f"too early (before {min_step:,} steps, or our runs end before the published curve starts). Our points follow "
        "each algorithm's own evaluation protocol (eval_episodes, default 5; eval_deterministic); the published "
        "protocols are in the notes."
    )


def notes(checks: list[Check], reference: dict[str, Any]) -> list[str]:
    """Each used source's provenance and protocol, then every reason a row has no numbers."""
    lines = []
    for name in dict.fromkeys(c.source for c in checks if c.curve):
        source = reference["sources"][name]
        repository = reference["repositories"][source["repository"]]
        lines.append(
            f"{source['name']}: {repository['title']} at {repository['commit'][:7]}, {repository['license']}. "
            f"{source['notes']['all']}"
        )
    lines += list(dict.fromkeys(c.detail for c in checks if c.verdict == "reference unavailable"))
    if not checks:
        lines.append("No label of this study is checked against published curves (study key reproduction.references).")
    elif not any(c.curve for c in checks):
        lines.append(
            "None of the checked labels' tasks has a published curve (the tasks each source has are listed in "
            "config/reference.yaml)."
        )
    return lines


def detail_table(
    checks: list[Check], study: studylib.Study, reference: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    shown, machine = [], []
    for c in checks:
        decimals = _decimals(c)
        has = bool(c.ours)
        step = "—"
        if c.step is not None:
            step = f"{c.step:,}" + (f" ({c.reference_step:,})" if c.reference_step != c.step else "")
        column = "" if c.column == "score" else f" ({c.column})"
        shown.append(
            {
                "Label": study.names[c.label],
                "Task": c.task,
                "Published curve": f"{reference['sources'][c.source]['name']}: {c.curve}" if c.curve else "—",
                "Step": step,
                "Ours IQM [CI]": f"{fmt_ci(c.ours, decimals)} ({c.seeds_ours}){column}" if has else "—",
                "Published IQM [CI]": f"{fmt_ci(c.theirs, decimals)} ({c.seeds_reference})" if has else "—",
                "Overlap": c.overlap or "—",
                "Verdict": c.verdict,
                "Note": c.detail,
            }
        )
        row = {
            "label": c.label, "task": c.task, "source": c.source, "curve": c.curve, "our_column": c.column,
            "step": c.step, "reference_step": c.reference_step, "seeds_ours": c.seeds_ours,
            "seeds_reference": c.seeds_reference,
        }  # fmt: skip
        for side, triple in (("ours", c.ours), ("theirs", c.theirs)):
            row[side], row[f"{side}_lo"], row[f"{side}_hi"] = triple if triple else (None, None, None)
        row.update(overlap=c.overlap, verdict=c.verdict, note=c.detail)
        machine.append(row)
    return pd.DataFrame(shown), pd.DataFrame(machine)


def summary_frame(checks: list[Check], study: studylib.Study) -> pd.DataFrame:
    rows = [[c.label, study.names[c.label], c.task, c.source, c.verdict, c.step] for c in checks]
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    frame["step"] = frame["step"].astype("Int64")
    return frame


def summary_markdown(checks: list[Check], study: studylib.Study) -> str:
    title = f"**Reproduction verdicts ({study.name} study): labels x tasks, at the last env step both evaluated.**"
    if not checks:
        return f"{title}\n\n*(no label of this study is checked against published curves)*\n"
    tasks = list(dict.fromkeys(c.task for c in checks))
    matrix = {study.names[c.label]: {} for c in checks}
    for c in checks:
        matrix[study.names[c.label]][c.task] = c.verdict + (f" ({c.step:,})" if c.step is not None else "")
    frame = pd.DataFrame([{"Label": label, **{t: row.get(t, "—") for t in tasks}} for label, row in matrix.items()])
    return (
        f"{title}\n\n{frame.to_markdown(index=False)}\n\n"
        "Verdicts: consistent / lower / higher / too early; details and protocol notes in `tables/reproduction.md`, "
        "every matched step in `tables/reproduction_steps.csv`.\n"
    )


def write_tables(tables: Path, checks: list[Check], study: studylib.Study, reference: dict[str, Any]) -> None:
    tables.mkdir(parents=True, exist_ok=True)
    shown, machine = detail_table(checks, study, reference)
    text, lines = caption(study), notes(checks, reference)
    (tables / "reproduction.md").write_text(to_markdown(shown, text, lines))
    (tables / "reproduction.tex").write_text(to_latex(shown, text, lines, f"tab:{study.name}-reproduction"))
    (tables / "reproduction.html").write_text(html_page("Reproduction check", to_html(shown, text, lines)))
    machine.to_csv(tables / "reproduction.csv", index=False)
    steps = pd.DataFrame([row for c in checks for row in c.steps], columns=STEP_COLUMNS)
    steps.to_csv(tables / "reproduction_steps.csv", index=False)
    summary_frame(checks, study).to_csv(tables / "reproduction_summary.csv", index=False)
    (tables / "reproduction_summary.md").write_text(summary_markdown(checks, study))


# -------------------------------------------------------------------------------------------------- plots
def overlay_plot(path_prefix: Path, label: str, checks: list[Check], study: studylib.Study, reference: dict) -> None:
    """Our IQM curve and band over the published one, one panel per task with a published curve."""
    path_prefix.parent.mkdir(parents=True, exist_ok=True)
    drawn = [c for c in checks if c.plot is not None]
    name = study.names[label]
    if not drawn:
        reasons = "; ".join(dict.fromkeys(f"{c.task}: {c.verdict}" for c in checks)) or "no task"
        fig = plt.figure(figsize=(8, 2.2))
        text = f"Reproduction check of {name}: nothing to overlay ({reasons})."
        fig.text(0.5, 0.5, textwrap.fill(text, 90), ha="center", va="center", fontsize=10)
    else:
        cols = min(4, len(drawn))
        rows = math.ceil(len(drawn) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.3 * rows), squeeze=False)
        for ax in axes.flat[len(drawn) :]:
            ax.axis("off")
        color = label_colors(study.labels)[label]
        for ax, check in zip(axes.flat, drawn, strict=False):
            steps, point, lo, hi = check.plot["ours"]
            ref_steps, ref_point, ref_lo, ref_hi = check.plot["theirs"]
            # Up to our last step and the published point right after it, so the y range fits what is compared.
            after = ref_steps[ref_steps >= steps[-1]]
            shown = ref_steps <= (after[0] if after.size else ref_steps[-1])
            source = reference["sources"][check.source]["name"]
            ax.plot(ref_steps[shown], ref_point[shown], color="black", linestyle="--", linewidth=1.4,
                    label=f"{source} ({check.seeds_reference})")  # fmt: skip
            ax.fill_between(ref_steps[shown], ref_lo[shown], ref_hi[shown], color="black", alpha=0.12)
            ax.plot(steps, point, color=color, linewidth=1.8, label=f"ours ({check.seeds_ours})")
            ax.fill_between(steps, lo, hi, color=color, alpha=0.25)
            ax.set_xlim(0, max(int(steps[-1]), int(ref_steps[shown][-1])) * 1.03)
            ax.set_title(f"{check.task}: {check.verdict}", fontsize=10)
            metric = "success rate" if studylib.suite_of(check.task) == "myo" else "return"
            ax.set_ylabel(f"IQM {metric}" + (f" ({check.column})" if check.column != "score" else ""))
            ax.set_xlabel("env steps")
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
            ax.grid(True, alpha=0.25)
            ax.legend(fontsize=7)
        fig.suptitle(
            f"{name} against published curves ({study.name} study)\n"
            f"IQM over seeds with {study.bootstrap['confidence']:.0%} CIs; seeds in parentheses",
            fontsize=9,
        )
        fig.tight_layout()
    fig.savefig(f"{path_prefix}.png", dpi=150, bbox_inches="tight")
    fig.savefig(f"{path_prefix}.pdf", bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--long", required=True)
    parser.add_argument("--reference-config", required=True)
    parser.add_argument("--reference-files", required=True, help="manifest written by reference_data.py")
    parser.add_argument("--tables", required=True, help="directory of the reproduction tables")
    parser.add_argument("--plots", required=True, help="directory of the per-label overlay plots")
    args = parser.parse_args(argv)

    try:
        reference = reference_data.load_reference_config(args.reference_config)
        study = studylib.load_study(args.study, check_registry=False)
        checks = run_checks(
            study, pd.read_csv(args.long), reference, json.loads(Path(args.reference_files).read_text())
        )
    except studylib.StudyError as error:
        sys.exit(f"reproduction check: {error}")
    write_tables(Path(args.tables), checks, study, reference)
    for label in reference_data.overlay_labels(study, reference):
        overlay_plot(
            Path(args.plots) / f"reproduction_{label}", label, [c for c in checks if c.label == label], study, reference
        )


if __name__ == "__main__":
    main()
