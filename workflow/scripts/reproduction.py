"""Reproduction check: our DIME against the DIME authors' released learning curves, at matching env steps.

    python workflow/scripts/reproduction.py --study config/studies/quick.yaml --long results/quick/scores_long.csv \
        --reference-config config/reference.yaml --reference-dir ../shared/reference/dime_paper_results \
        --table results/quick/tables/reproduction --plot results/quick/plots/reproduction_overlay

The released curves (ALRhub/DIME ``paper_results/``, 10 seeds, mean of 5 stochastic evaluation episodes every 24k
env steps) are read offline from ``--reference-dir``; each file's SHA-256 is checked against config/reference.yaml.
For every task the study's focus label ran that has a released curve: IQM over seeds with a stratified-bootstrap CI
for both sides at every env step where both evaluated (exact match, or within 1% of the step), a verdict at the
last such step (CIs overlap: consistent; disjoint: lower / higher; before ``reproduction.min_step``: too early) and
an overlay plot. A missing directory is reported in the outputs and on stderr (``--required`` makes it an error).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import studylib
import yaml
from aggregate import interval, iqm_along_runs
from make_plots import label_colors
from make_tables import fmt_ci, latex_escape

SOURCE = "ALRhub/DIME@{commit:.7} paper_results"


class ReferenceDataError(RuntimeError):
    """The reference data cannot be used (missing directory, missing file, checksum mismatch)."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_reference(directory: Path, entry: dict[str, Any], verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """(env steps (T,), scores (seeds, T)) of one released task folder."""
    folder = directory / entry["folder"]
    returns_path, steps_path = folder / "mean_return.npy", folder / "env_interacts.npy"
    for path in (returns_path, steps_path):
        if not path.exists():
            raise ReferenceDataError(f"reference file {path} is missing")
    if verify and sha256(returns_path) != entry["sha256"]:
        raise ReferenceDataError(
            f"{returns_path} does not match the released file (sha256 {sha256(returns_path)[:12]}... instead of "
            f"{entry['sha256'][:12]}...); set reference_verify: false to compare anyway"
        )
    steps = np.load(steps_path)
    values = np.load(returns_path)
    return steps[0].astype(int), values.astype(float)


def match_steps(ours: np.ndarray, theirs: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs (i, j) where our step i and their step j agree exactly or within 1%."""
    pairs = []
    for i, step in enumerate(ours):
        j = int(np.argmin(np.abs(theirs - step)))
        if abs(int(theirs[j]) - int(step)) <= max(1, 0.01 * step):
            pairs.append((i, j))
    return pairs


def our_curves(long: pd.DataFrame, label: str, task: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(steps on which every finished seed evaluated, scores (seeds, steps), seeds) of our runs."""
    rows = long[(long["algorithm"] == label) & (long["task"] == task)]
    seeds = sorted(int(s) for s in rows["seed"].unique())
    if not seeds:
        return np.zeros(0, dtype=int), np.zeros((0, 0)), []
    per_seed = {s: rows[rows["seed"] == s].set_index("step")["score"] for s in seeds}
    common = sorted(set.intersection(*(set(v.index) for v in per_seed.values())))
    values = np.array([per_seed[s].loc[common].to_numpy(dtype=float) for s in seeds]).reshape(len(seeds), -1)
    return np.array(common, dtype=int), values, seeds


def verdict(ours: list[float], theirs: list[float], step: int, min_step: int) -> str:
    if step < min_step:
        return f"too early (< {min_step:,} steps)"
    if ours[2] < theirs[1]:
        return "lower"
    if ours[1] > theirs[2]:
        return "higher"
    return "consistent"


def compare(
    study: studylib.Study,
    long: pd.DataFrame,
    reference: dict[str, Any],
    directory: Path,
    verify: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One table row per task of the focus label, and the curves the overlay plot draws."""
    boot = study.bootstrap
    seed, conf = boot["seed"], boot["confidence"]
    min_step = study.data["reproduction"]["min_step"]
    focus = study.focus
    tasks = list(dict.fromkeys(run.task for run in study.runs.values() if run.label == focus))
    rows, curves = [], {}
    for task in tasks:
        entry = reference["tasks"].get(task)
        steps, values, seeds = our_curves(long, focus, task)
        row: dict[str, Any] = {"task": task, "reference": entry["folder"] if entry else None, "seeds_ours": len(seeds)}
        if entry is None:
            rows.append({**row, "verdict": "no released curve", "note": ""})
            continue
        ref_steps, ref_values = load_reference(directory, entry, verify)
        row["seeds_reference"] = ref_values.shape[0]
        row["note"] = entry.get("note", "")
        pairs = match_steps(steps, ref_steps) if seeds else []
        if not pairs:
            rows.append({**row, "verdict": "no matching env step" if seeds else "no finished run"})
            continue
        ours_idx, ref_idx = (list(t) for t in zip(*pairs, strict=True))
        ours_curve = interval(values[:, ours_idx], iqm_along_runs, boot["curve_reps"], seed, conf)
        ref_curve = interval(ref_values[:, ref_idx], iqm_along_runs, boot["curve_reps"], seed, conf)
        last_ours, last_ref = ours_idx[-1], ref_idx[-1]
        ours = [float(v[0]) for v in interval(values[:, [last_ours]], iqm_along_runs, boot["reps"], seed, conf)]
        theirs = [float(v[0]) for v in interval(ref_values[:, [last_ref]], iqm_along_runs, boot["reps"], seed, conf)]
        judged = [k for k, i in enumerate(ours_idx) if steps[i] >= min_step]
        overlap = sum(1 for k in judged if ours_curve[1][k] <= ref_curve[2][k] and ref_curve[1][k] <= ours_curve[2][k])
        step = int(steps[last_ours])
        rows.append(
            {
                **row,
                "step": step,
                "reference_step": int(ref_steps[last_ref]),
                "ours": ours,
                "theirs": theirs,
                "difference": ours[0] - theirs[0],
                "overlap": f"{overlap}/{len(judged)}",
                "verdict": verdict(ours, theirs, step, min_step),
            }
        )
        curves[task] = {
            "ours": (steps, *interval(values, iqm_along_runs, boot["curve_reps"], seed, conf)),
            "theirs": (ref_steps, *interval(ref_values, iqm_along_runs, boot["curve_reps"], seed, conf)),
            "metric": "success" if studylib.suite_of(task) == "myo" else "return",
        }
    return rows, curves


# ------------------------------------------------------------------------------------------------ output
def _caption(study: studylib.Study, reference: dict[str, Any], directory: Path) -> str:
    boot, focus = study.bootstrap, study.focus
    spec = study.data["algorithms"][focus]
    overrides = spec.get("set", {})
    config = (
        f"with overrides {json.dumps(overrides, sort_keys=True)} (not the paper configuration)"
        if overrides
        else "with the paper configuration (algorithm defaults)"
    )
    return (
        f"Reproduction check ({study.name} study): our {focus} (algo {spec['algo']}, {config}) against the DIME "
        f"authors' released curves ({SOURCE.format(commit=reference['commit'])}, read from {directory}; 10 seeds, "
        "mean of 5 stochastic evaluation episodes per point, every 24k env steps) at the last env step both "
        f"evaluated. IQM over seeds [{boot['confidence']:.0%} CI], percentile stratified bootstrap, "
        f"{boot['reps']:,} replications, np.random.seed({boot['seed']}) before every call. Overlap: points from "
        f"{study.data['reproduction']['min_step']:,} steps on where the two CIs overlap. Verdict: consistent (CIs "
        "overlap), lower / higher (disjoint), too early (before the minimum step). Gym: the authors ran -v3 with "
        "mujoco-py, this suite runs -v4."
    )


def table_frames(rows: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    shown, machine = [], []
    for row in rows:
        decimals = 2 if studylib.suite_of(row["task"]) == "myo" else 0
        has = "ours" in row
        shown.append(
            {
                "Task": row["task"],
                "Released curve": row["reference"] or "—",
                "Step": f"{row['step']:,}" if has else "—",
                "Ours IQM [CI]": f"{fmt_ci(row['ours'], decimals)} ({row['seeds_ours']})" if has else "—",
                "Authors IQM [CI]": f"{fmt_ci(row['theirs'], decimals)} ({row['seeds_reference']})" if has else "—",
                "Overlap": row.get("overlap", "—"),
                "Verdict": row["verdict"],
                "Note": row.get("note", ""),
            }
        )
        flat = {k: v for k, v in row.items() if k not in ("ours", "theirs")}
        if has:
            for side in ("ours", "theirs"):
                flat[side], flat[f"{side}_lo"], flat[f"{side}_hi"] = row[side]
        machine.append(flat)
    return pd.DataFrame(shown), pd.DataFrame(machine)


def write_tables(prefix: Path, caption: str, shown: pd.DataFrame, machine: pd.DataFrame, notes: list[str]) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    body = shown.to_markdown(index=False) if not shown.empty else "*(no rows)*"
    markdown = f"**{caption}**\n\n{body}\n" + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    Path(f"{prefix}.md").write_text(markdown)
    frame = shown if not shown.empty else pd.DataFrame({"": ["(no rows)"]})
    escaped = frame.map(latex_escape)
    escaped.columns = [latex_escape(c) for c in frame.columns]
    latex = escaped.style.hide(axis="index").to_latex(
        hrules=True,
        caption=latex_escape(caption),
        label="tab:reproduction",
        position="htbp",
        column_format="l" * frame.shape[1],
    )
    if notes:
        latex = latex.replace(
            "\\end{table}", "\\par\\smallskip\n{\\footnotesize " + latex_escape(" ".join(notes)) + "}\n\\end{table}"
        )
    Path(f"{prefix}.tex").write_text(latex)
    machine.to_csv(f"{prefix}.csv", index=False)


def overlay_plot(prefix: Path, study: studylib.Study, curves: dict[str, Any], message: str | None) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    color = label_colors(study.labels)[study.focus]
    tasks = list(curves)
    if not tasks:
        # Nothing to overlay: a figure that carries the reason, so the report and the README still say why.
        fig = plt.figure(figsize=(8, 2.2))
        fig.text(0.5, 0.5, textwrap.fill(message or "nothing to compare", 90), ha="center", va="center", fontsize=10)
        fig.savefig(f"{prefix}.png", dpi=150, bbox_inches="tight")
        fig.savefig(f"{prefix}.pdf", bbox_inches="tight")
        plt.close(fig)
        return
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    for ax, task in zip(axes.flat, tasks, strict=False):
        data = curves[task]
        steps, point, lo, hi = data["ours"]
        ref_steps, ref_point, ref_lo, ref_hi = data["theirs"]
        ax.plot(ref_steps, ref_point, color="black", linestyle="--", linewidth=1.4, label="authors (released)")
        ax.fill_between(ref_steps, ref_lo, ref_hi, color="black", alpha=0.12)
        ax.plot(steps, point, color=color, linewidth=1.8, label=f"ours ({study.focus})")
        ax.fill_between(steps, lo, hi, color=color, alpha=0.25)
        beyond = ref_steps[ref_steps >= steps[-1]]
        ax.set_xlim(0, max(int(steps[-1]), int(beyond[0]) if beyond.size else int(ref_steps[-1])) * 1.03)
        ax.set_title(task, fontsize=10)
        ax.set_ylabel("IQM success rate" if data["metric"] == "success" else "IQM return")
        ax.set_xlabel("env steps")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Reproduction check ({study.name} study): {study.focus} vs the DIME authors' released curves "
        f"({study.bootstrap['confidence']:.0%} CIs)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(f"{prefix}.png", dpi=150, bbox_inches="tight")
    fig.savefig(f"{prefix}.pdf", bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--long", required=True)
    parser.add_argument("--reference-config", required=True)
    parser.add_argument("--reference-dir", required=True)
    parser.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of the reference files")
    parser.add_argument("--required", action="store_true", help="fail when the reference directory is missing")
    parser.add_argument("--table", required=True, help="output prefix of reproduction.{md,tex,csv}")
    parser.add_argument("--plot", required=True, help="output prefix of the overlay plot (.png, .pdf)")
    args = parser.parse_args(argv)

    study = studylib.load_study(args.study, check_registry=False)
    reference = yaml.safe_load(Path(args.reference_config).read_text())
    directory = Path(args.reference_dir)
    long = pd.read_csv(args.long)
    caption = _caption(study, reference, directory)
    if not directory.is_dir():
        message = (
            f"Reference directory '{directory}' not found: reproduction check NOT performed. Put the released "
            f"curves ({SOURCE.format(commit=reference['commit'])}, see config/reference.yaml for the download "
            "URLs) there or set reference_dir in config/config.yaml."
        )
        if args.required:
            sys.exit(message)
        print(f"WARNING: {message}", file=sys.stderr)
        write_tables(Path(args.table), caption, pd.DataFrame(), pd.DataFrame({"verdict": [message]}), [message])
        overlay_plot(Path(args.plot), study, {}, message)
        return
    try:
        rows, curves = compare(study, long, reference, directory, verify=not args.no_verify)
    except ReferenceDataError as error:
        sys.exit(f"reproduction check: {error}")
    notes = []
    if not curves:
        notes.append(
            f"No task of the {study.name} study where {study.focus} finished has a released curve "
            "(the tasks that have one are listed in config/reference.yaml)."
        )
    shown, machine = table_frames(rows)
    write_tables(Path(args.table), caption, shown, machine, notes)
    overlay_plot(Path(args.plot), study, curves, notes[0] if notes else None)


if __name__ == "__main__":
    main()
