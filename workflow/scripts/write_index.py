"""``results/<study>/README.md``: every table of a study inline and every plot linked, for reading on GitHub.

    python workflow/scripts/write_index.py --study config/studies/quick.yaml --results results/quick \
        --manifest results/quick/provenance.json --out results/quick/README.md
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import studylib

PLOTS = (
    ("interval_estimates", "Aggregate metrics with CIs"),
    ("sample_efficiency", "IQM sample-efficiency curves"),
    ("learning_curves", "Per-task learning curves"),
    ("performance_profiles", "Performance profiles"),
    ("poi", "Probability of improvement"),
)


def index(study: studylib.Study, results: Path, manifest: dict) -> str:
    lines = [
        f"# Results of the `{study.name}` study",
        "",
        study.data.get("description", "").strip(),
        "",
        f"Produced by `snakemake --cores all --config study={study.name}` from `{studylib.display_path(study.path)}`"
        f" (workflow commit `{manifest['workflow_git_commit']}`"
        f"{', uncommitted changes' if manifest['workflow_git_dirty'] else ''}). "
        f"Runs: {manifest['runs_ok']} finished of {manifest['runs_expected']} expected"
        f" ({manifest['runs_missing']} missing, {manifest['runs_failed']} failed); "
        f"{manifest['training_wall_clock_h']:.2f} h of training on {', '.join(manifest['devices']) or 'n/a'}. "
        "Every evaluation point is in [`scores_long.csv`](scores_long.csv), run status in [`runs.csv`](runs.csv), "
        "provenance (commits, config hashes, package versions, hosts, SLURM job ids) in "
        "[`provenance.json`](provenance.json). LaTeX and CSV versions of every table are in [`tables/`](tables/), "
        "PDF versions of every plot in [`plots/`](plots/).",
        "",
    ]
    lines += reproduction_summary(results)
    for exp in study.experiments:
        lines += [f"## {exp.title}", ""]
        for kind in ("aggregate", "per_task", "poi"):
            lines += [(results / "tables" / f"{exp.name}_{kind}.md").read_text().strip(), ""]
        for kind, title in PLOTS:
            lines += [f"![{title}](plots/{exp.name}_{kind}.png)", ""]
    lines += reproduction_details(results)
    return "\n".join(lines)


def reproduction_summary(results: Path) -> list[str]:
    """The verdicts (labels x tasks) near the top, so a reader sees at a glance which numbers reproduce."""
    summary = (results / "tables" / "reproduction_summary.md").read_text().strip()
    return [summary, "", "Details: [Reproduction check](#reproduction-check-against-published-curves).", ""]


def reproduction_details(results: Path) -> list[str]:
    """The per-(label, task) table with its protocol notes and one overlay plot per checked label."""
    with (results / "tables" / "reproduction_summary.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Labels with a published curve for at least one of their tasks have an overlay (reference_data.overlay_labels).
    labels = list(dict.fromkeys(r["label"] for r in rows if r["verdict"] != "no published curve"))
    lines = ["## Reproduction check against published curves", ""]
    lines += [(results / "tables" / "reproduction.md").read_text().strip(), ""]
    lines += [f"![Reproduction check: {label}](plots/reproduction_{label}.png)" for label in labels]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    study = studylib.load_study(args.study, check_registry=False)
    manifest = json.loads(Path(args.manifest).read_text())
    Path(args.out).write_text(index(study, Path(args.results), manifest))


if __name__ == "__main__":
    main()
