"""A study's front pages: ``results/<study>/README.md`` (every table inline and every plot linked, for reading on
GitHub) and ``results/<study>/summary.html`` (the landing page of the HTML report: per-suite aggregate tables with
compute cost, the reproduction verdicts, provenance).

    python workflow/scripts/write_index.py --study config/studies/quick.yaml --results results/quick \
        --manifest results/quick/provenance.json --out results/quick/README.md --landing results/quick/summary.html

Both state the measured compute cost (aggregate.compute_cost over runs.csv) and say when the results were produced
with uncommitted changes.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import aggregate
import make_tables
import pandas as pd
import studylib

PLOTS = (
    ("interval_estimates", "Aggregate metrics with CIs"),
    ("sample_efficiency", "IQM sample-efficiency curves"),
    ("learning_curves", "Per-task learning curves"),
    ("performance_profiles", "Performance profiles"),
    ("poi", "Probability of improvement"),
)
REPRODUCTION_SUMMARY = Path("tables") / "reproduction_summary.csv"
# The report shows its landing text in a narrow column (Snakemake's "prose max-w-lg"); a page holding the summary
# drops that limit, so the tables do not run under the rule graph next to it. The meta tag makes the fragment
# decode as UTF-8 when opened on its own.
LANDING_HEAD = """<meta charset="utf-8">
<style>
.prose:has(.dime-summary) { max-width: none; }
.dime-code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.95em; }
</style>"""
SUMMARY_HEADERS = {"task": "Task", "source": "Source", "verdict": "Verdict", "step": "Env step"}


# ----------------------------------------------------------------------------------------- measured facts
def cost_table(study: studylib.Study, status: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per label of the study (every run counted once): finished runs and measured cost; and the study's total."""
    threads = study.data["resources"]["threads"]
    rows = []
    for label, name in study.names.items():
        runs = status[status["algorithm"] == label]
        per_run, total = make_tables.cost_cells(aggregate.compute_cost(runs, threads))
        rows.append(
            {
                "Algorithm": name,
                "Label": label,
                "Implementation": study.data["algorithms"][label]["algo"],
                "Finished runs": f"{int((runs['status'] == 'ok').sum())}/{len(runs)}",
                "Cost per run": per_run,
                "Total cost": total,
            }
        )
    return pd.DataFrame(rows), make_tables.cost_cells(aggregate.compute_cost(status, threads))[1]


class Markup(NamedTuple):
    code: Callable[[str], str]
    strong: Callable[[str], str]
    text: Callable[[str], str]


MARKDOWN = Markup(code=lambda s: f"`{s}`", strong=lambda s: f"**{s}**", text=lambda s: s)
HTML = Markup(
    code=lambda s: f'<span class="dime-code">{html.escape(s)}</span>', strong=lambda s: f"<b>{s}</b>", text=html.escape
)


def measured_sentences(manifest: dict[str, Any], total_cost: str, markup: Markup) -> str:
    """Runs finished, compute spent, and which commits aggregated and trained the results (flagging uncommitted
    changes): measured facts, where the study file's description can only give an expectation."""

    def commit(sha: str | None, dirty: bool | None) -> str:
        return markup.code((sha or "unknown")[:10]) + (" " + markup.strong("with uncommitted changes") if dirty else "")

    summaries = [run["summary"] for run in manifest["runs"] if "summary" in run]
    trained = Counter(commit(s.get("git_commit"), s.get("git_dirty")) for s in summaries)
    devices = ", ".join(manifest["devices"]) or "n/a"
    sentences = [
        markup.text(
            f"{manifest['runs_ok']} of {manifest['runs_expected']} runs finished ({manifest['runs_missing']} "
            f"missing, {manifest['runs_failed']} failed); compute {total_cost} on {devices}."
        ),
        f"Aggregated at workflow commit {commit(manifest['workflow_git_commit'], manifest['workflow_git_dirty'])}.",
    ]
    if trained:
        listing = "; ".join(f"{where} ({count} run{'s' * (count > 1)})" for where, count in trained.most_common())
        sentences.append(f"Runs trained at {listing}.")
    if manifest["workflow_git_dirty"] or any(s.get("git_dirty") for s in summaries):
        sentences.append(
            markup.text(
                "Results produced with uncommitted changes cannot be traced to a commit: regenerate them at a clean "
                "checkout before citing them."
            )
        )
    return " ".join(sentences)


# ---------------------------------------------------------------------------------------------- README.md
def index(study: studylib.Study, results: Path, manifest: dict, status: pd.DataFrame) -> str:
    costs, total = cost_table(study, status)
    lines = [
        f"# Results of the `{study.name}` study",
        "",
        f"*Study description ({studylib.display_path(study.path)}):* {study.data.get('description', '').strip()}",
        "",
        f"**Measured:** {measured_sentences(manifest, total, MARKDOWN)}",
        "",
        f"Produced by `snakemake --cores all --config study={study.name}`. Every evaluation point is in "
        "[`scores_long.csv`](scores_long.csv), run status in [`runs.csv`](runs.csv), provenance (commits, config "
        "hashes, package versions, hosts, SLURM job ids) in [`provenance.json`](provenance.json). LaTeX, HTML and "
        "CSV versions of every table are in [`tables/`](tables/), PDF versions of every plot in [`plots/`](plots/); "
        f"`snakemake --report results/{study.name}/report.html` bundles them into one HTML page.",
        "",
        "## Algorithms and compute cost",
        "",
        costs.to_markdown(index=False),
        "",
        make_tables.cost_sentence(study.data["resources"]["threads"], "all the label's runs in the study"),
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


# ---------------------------------------------------------------------------------------------- README.md
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


# ------------------------------------------------------------------------------------ report landing page
def reproduction_summary_html(study: studylib.Study, results: Path) -> str:
    """The verdict per task from tables/reproduction_summary.csv (written by the reproduction check), if present."""
    path = results / REPRODUCTION_SUMMARY
    if not path.is_file():
        return f"<p>No reproduction summary ({REPRODUCTION_SUMMARY} was not produced).</p>"
    table = pd.read_csv(path)
    table.insert(0, "Algorithm", table.pop("label").map(lambda label: study.names.get(label, label)))
    table = table.drop(columns=["display_name"], errors="ignore")
    table = table.rename(columns=SUMMARY_HEADERS)
    caption = f"Reproduction verdicts ({REPRODUCTION_SUMMARY}); details under “Reproduction check”."
    return make_tables.to_html(table, caption, [])


def landing(study: studylib.Study, results: Path, manifest: dict, status: pd.DataFrame) -> str:
    """An HTML fragment for the report's landing page (workflow/report/workflow.rst embeds it)."""
    _, total = cost_table(study, status)
    facts = measured_sentences(manifest, total, HTML)
    parts = [LANDING_HEAD, make_tables.HTML_STYLE, '<div class="dime-summary">']
    parts.append(f'<div class="dime-table"><p><b>Measured:</b> {facts}</p></div>')
    for exp in study.experiments:
        stats = json.loads((results / "stats" / f"{exp.name}.json").read_text())
        shown, _, _, notes = make_tables.aggregate_table(stats)
        boot = stats["bootstrap"]
        caption = (
            f"Per-suite aggregate of normalised scores at the last evaluation at or before {stats['steps']:,} env "
            f"steps: point estimate [{boot['confidence']:.0%} CI], stratified bootstrap ({boot['reps']:,} "
            f"replications); compute cost per run and in total. Full caption under “{exp.name}”."
        )
        parts += [f"<h3>{html.escape(exp.title)}</h3>", make_tables.to_html(shown, caption, notes)]
    parts += ["<h3>Reproduction check</h3>", reproduction_summary_html(study, results), "</div>"]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True, help="README.md")
    parser.add_argument("--landing", required=True, help="the report's landing-page fragment (summary.html)")
    args = parser.parse_args(argv)
    study = studylib.load_study(args.study, check_registry=False)
    results = Path(args.results)
    manifest = json.loads(Path(args.manifest).read_text())
    status = pd.read_csv(results / "runs.csv")
    Path(args.out).write_text(index(study, results, manifest, status))
    Path(args.landing).write_text(landing(study, results, manifest, status))


if __name__ == "__main__":
    main()
