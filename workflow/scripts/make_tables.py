"""Tables of one experiment in Markdown, LaTeX (booktabs), HTML and CSV from its statistics (aggregate.py).

    python workflow/scripts/make_tables.py --stats results/quick/stats/main.json --prefix results/quick/tables/main

Writes ``<prefix>_{aggregate,per_task,poi}.{md,tex,html,csv}``. Cells read "IQM [lo, hi]"; every table states the
bootstrap replications, seed and confidence level in its caption (the CSV carries them as columns), and every
missing or failed seed is listed under the table that lacks it. Algorithms appear under their display names
(studylib.display_name); the CSVs keep the study label too. The aggregate table carries each label's compute cost.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import aggregate
import pandas as pd
import studylib

METRIC_KEYS = {"IQM": "iqm", "Median": "median", "Mean": "mean", "Optimality gap": "optimality_gap"}
DAGGER = "†"
AGGREGATE_COST_SCOPE = (
    "the label's runs on the suite's tasks in this experiment (a run shared with another experiment is trained once, "
    "to the larger budget, and counted in both)"
)


def fmt(value: float | None, decimals: int) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:,.{decimals}f}"


def decimals_for(values: list[float | None], metric: str) -> int:
    """Success rates and normalised scores get 2-3 decimals; returns are rounded to their magnitude."""
    if metric == "success":
        return 2
    if metric == "normalised":
        return 3
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    biggest = max(finite, default=0.0)
    return 0 if biggest >= 100 else 1 if biggest >= 10 else 2


def fmt_ci(triple: list[float | None], decimals: int) -> str:
    point, lo, hi = triple
    if point is None:
        return "—"
    return f"{fmt(point, decimals)} [{fmt(lo, decimals)}, {fmt(hi, decimals)}]"


def bootstrap_sentence(boot: dict[str, Any], reps_key: str = "reps") -> str:
    return (
        f"Point estimate [{boot['confidence']:.0%} CI], percentile stratified bootstrap over runs "
        f"(rliable {boot['rliable']}), {boot[reps_key]:,} replications, np.random.seed({boot['seed']}) before "
        "every call."
    )


def seeds_cell(found: int | None, expected: int) -> str:
    if found is None:
        return "—"
    return f"{found}" if found == expected else f"{found}/{expected}{DAGGER}"


def fmt_hours(hours: float) -> str:
    """Hours with two or three significant digits: 0.00083, 0.047, 0.50, 2.35, 12.4, 1,234."""
    if hours >= 100:
        return f"{hours:,.0f}"
    if hours >= 10:
        return f"{hours:.1f}"
    if hours >= 1:
        return f"{hours:.2f}"
    return f"{hours:#.2g}" if hours > 0 else "0"


def cost_cells(cost: dict[str, dict[str, float]]) -> tuple[str, str]:
    """("mean per run", "total (runs)") of aggregate.compute_cost, one term per unit: "0.047 CPU-h", ..."""
    if not cost:
        return "—", "—"
    per_run = " + ".join(f"{fmt_hours(c['mean'])} {unit}" for unit, c in cost.items())
    total = " + ".join(
        f"{fmt_hours(c['total'])} {unit} ({c['runs']} run{'s' * (c['runs'] != 1)})" for unit, c in cost.items()
    )
    return per_run, total


def cost_sentence(threads: int, over: str) -> str:
    """What the cost columns mean; ``over`` says which runs the total covers."""
    return (
        "Cost: wall-clock hours of training and evaluation per run (summary.json wall_clock_s) on its device, GPU-h "
        f"on a GPU, CPU-h = hours x {threads} CPU thread{'s' * (threads > 1)} per job on CPU; mean per run and total "
        f"over {over}; finished and failed runs count."
    )


def _absent_notes(stats: dict[str, Any]) -> list[str]:
    names, notes = stats["names"], []
    for suite, block in stats["suites"].items():
        for label, tasks in block["per_task"].items():
            for task, entry in tasks.items():
                for seed, why in entry["absent"].items():
                    notes.append(
                        f"{DAGGER} {names[label]} on {task} ({studylib.SUITE_TITLES[suite]}): seed {seed} {why}."
                    )
    return notes


# ---------------------------------------------------------------------------------------------- tables
def aggregate_table(stats: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, str, list[str]]:
    boot, names = stats["bootstrap"], stats["names"]
    shown, machine, notes = [], [], []
    for suite, block in stats["suites"].items():
        for label, entry in block["aggregate"].items():
            metrics = entry["metrics"]
            row = {
                "Suite": studylib.SUITE_TITLES[suite],
                "Algorithm": names[label],
                "Tasks": f"{entry['tasks_covered']}/{entry['tasks_total']}",
                "Seeds": seeds_cell(entry["runs_per_task"], entry["seeds_expected"]),
            }
            record: dict[str, Any] = {
                "suite": suite,
                "algorithm": label,
                "name": names[label],
                "algo": stats["algos"][label],
                "tasks_covered": entry["tasks_covered"],
                "tasks_total": entry["tasks_total"],
                "seeds_used": entry["runs_per_task"],
                "seeds_expected": entry["seeds_expected"],
            }
            for name, key in METRIC_KEYS.items():
                triple = metrics.get(name, [None, None, None])
                row[name] = fmt_ci(triple, 3)
                record[key], record[f"{key}_lo"], record[f"{key}_hi"] = triple
                record[f"{key}_ci"] = row[name]
            cost = block["cost"][label]
            row["Cost per run"], row["Total cost"] = cost_cells(cost)
            for unit in aggregate.COST_UNITS:
                column = unit.lower().replace("-", "_")
                spent = cost.get(unit, {})
                record[f"{column}_runs"] = spent.get("runs", 0)
                record[f"{column}_per_run"] = spent.get("mean")
                record[f"{column}_total"] = spent.get("total")
            record["note"] = entry["note"]
            if entry["note"]:
                notes.append(f"{names[label]} ({studylib.SUITE_TITLES[suite]}): {entry['note']}.")
            shown.append(row)
            machine.append(record)
    caption = (
        f"{stats['title']} ({stats['study']} study): per-suite aggregate of normalised scores at the last evaluation "
        f"at or before {stats['steps']:,} env steps. {bootstrap_sentence(boot)} IQM: interquartile mean over "
        "runs x tasks; Median and Mean: of per-task means; Optimality gap: mean shortfall below 1 (gamma = 1). "
        "Normalisation: DMC return/1000; Gym (R - R_random)/(R_SAC - R_random) (config/normalisation.yaml); "
        "MyoSuite final-step success rate. Seeds: runs per task used (/expected when some are missing); Tasks: "
        f"covered/in suite. {cost_sentence(stats['threads'], AGGREGATE_COST_SCOPE)}"
    )
    return pd.DataFrame(shown), _with_bootstrap(pd.DataFrame(machine), stats, "reps"), caption, notes


def per_task_table(stats: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, str, list[str]]:
    boot, names = stats["bootstrap"], stats["names"]
    shown, machine = [], []
    for suite, block in stats["suites"].items():
        metric = block["metric"]
        for task in block["tasks"]:
            entries = {label: tasks[task] for label, tasks in block["per_task"].items() if task in tasks}
            values = [v for e in entries.values() for v in (e["iqm"] + [e["mean"], e["median"]])]
            decimals = decimals_for(values, metric)
            for label, entry in entries.items():
                shown.append(
                    {
                        "Suite": studylib.SUITE_TITLES[suite],
                        "Task": task,
                        "Algorithm": names[label],
                        "Seeds": seeds_cell(entry["seeds_found"], entry["seeds_expected"]),
                        f"IQM {metric}": fmt_ci(entry["iqm"], decimals),
                        "Mean": fmt(entry["mean"], decimals),
                        "Median": fmt(entry["median"], decimals),
                    }
                )
                machine.append(
                    {
                        "suite": suite,
                        "task": task,
                        "algorithm": label,
                        "name": names[label],
                        "algo": stats["algos"][label],
                        "metric": metric,
                        "seeds_found": entry["seeds_found"],
                        "seeds_expected": entry["seeds_expected"],
                        "seeds": " ".join(map(str, entry["seeds"])),
                        "absent": "; ".join(f"seed {k}: {v}" for k, v in entry["absent"].items()),
                        "iqm": entry["iqm"][0],
                        "iqm_lo": entry["iqm"][1],
                        "iqm_hi": entry["iqm"][2],
                        "iqm_ci": fmt_ci(entry["iqm"], decimals),
                        "mean": entry["mean"],
                        "median": entry["median"],
                        "std": entry["std"],
                        "scores": " ".join(f"{s:.6g}" for s in entry["scores"]),
                    }
                )
    frame = pd.DataFrame(shown)
    if not frame.empty:
        # One score column per metric kind keeps returns and success rates apart.
        frame = frame.fillna("")
    caption = (
        f"{stats['title']} ({stats['study']} study): per-task scores in raw units (undiscounted return; MyoSuite: "
        f"final-step success rate) at the last evaluation at or before {stats['steps']:,} env steps. IQM over "
        f"seeds with its CI; {bootstrap_sentence(boot)} Seeds: finished runs (/expected when some are missing)."
    )
    return frame, _with_bootstrap(pd.DataFrame(machine), stats, "reps"), caption, _absent_notes(stats)


def poi_table(stats: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, str, list[str]]:
    boot, focus, names = stats["bootstrap"], stats["focus"], stats["names"]
    shown, machine = [], []
    for suite, block in stats["suites"].items():
        for label, entry in block["poi"].items():
            shown.append(
                {
                    "Suite": studylib.SUITE_TITLES[suite],
                    "Comparison": f"P({names[focus]} > {names[label]})",
                    "Tasks": len(entry["tasks"]),
                    "Runs": f"{entry['runs'][0]} vs {entry['runs'][1]}",
                    "Probability of improvement": fmt_ci(entry["value"], 3),
                }
            )
            machine.append(
                {
                    "suite": suite,
                    "x": focus,
                    "y": label,
                    "x_name": names[focus],
                    "y_name": names[label],
                    "tasks": " ".join(entry["tasks"]),
                    "runs_x": entry["runs"][0],
                    "runs_y": entry["runs"][1],
                    "poi": entry["value"][0],
                    "poi_lo": entry["value"][1],
                    "poi_hi": entry["value"][2],
                    "poi_ci": fmt_ci(entry["value"], 3),
                }
            )
    caption = (
        f"{stats['title']} ({stats['study']} study): probability of improvement P({names[focus]} > Y), the chance "
        f"that a run of {names[focus]} scores higher than a run of Y on a task (ties count half; Mann-Whitney U / "
        f"(n_x n_y)), averaged over the tasks both ran, at the last evaluation at or before {stats['steps']:,} env "
        f"steps. {bootstrap_sentence(boot, 'poi_reps')} Values above 0.5 favour {names[focus]}."
    )
    notes = [] if shown else [f"No comparison: {names[focus]} is not part of this experiment or has no finished run."]
    return pd.DataFrame(shown), _with_bootstrap(pd.DataFrame(machine), stats, "poi_reps"), caption, notes


def _with_bootstrap(frame: pd.DataFrame, stats: dict[str, Any], reps_key: str) -> pd.DataFrame:
    boot = stats["bootstrap"]
    frame = frame.convert_dtypes()
    frame["steps"] = stats["steps"]
    frame["bootstrap_reps"] = boot[reps_key]
    frame["bootstrap_seed"] = boot["seed"]
    frame["confidence"] = boot["confidence"]
    return frame


# ---------------------------------------------------------------------------------------------- writers
def to_markdown(frame: pd.DataFrame, caption: str, notes: list[str]) -> str:
    body = frame.to_markdown(index=False) if not frame.empty else "*(no rows)*"
    text = f"**{caption}**\n\n{body}\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return text


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\~{}"}


def latex_escape(text: str) -> str:
    text = re.sub(r"[&%$#_{}~]", lambda m: _LATEX_SPECIAL[m.group()], str(text))
    text = text.replace(DAGGER, r"\textsuperscript{\dag}").replace("—", "--")
    return text.replace("γ", r"$\gamma$").replace("α", r"$\alpha$")


def to_latex(frame: pd.DataFrame, caption: str, notes: list[str], label: str) -> str:
    """A booktabs ``table`` float (\\toprule/\\midrule/\\bottomrule); notes go under the tabular."""
    if frame.empty:
        frame = pd.DataFrame({"": ["(no rows)"]})
    escaped = frame.map(latex_escape)
    escaped.columns = [latex_escape(c) for c in frame.columns]
    latex = escaped.style.hide(axis="index").to_latex(
        hrules=True, caption=latex_escape(caption), label=label, position="htbp", column_format="l" * frame.shape[1]
    )
    if notes:
        block = "\\par\\smallskip\n{\\footnotesize " + " \\\\\n".join(latex_escape(n) for n in notes) + "}\n"
        latex = latex.replace("\\end{table}", block + "\\end{table}")
    return latex


HTML_STYLE = """<style>
.dime-table { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 13px;
              margin: 0 0 1.6em 0; color: #1f2328; }
.dime-table table { border-collapse: collapse; margin: 0.5em 0; }
.dime-table th, .dime-table td { padding: 3px 10px; border-bottom: 1px solid #d8dee4; white-space: nowrap;
                                 text-align: left; }
.dime-table thead th { border-bottom: 2px solid #57606a; }
.dime-table tbody tr:nth-child(even) { background: #f6f8fa; }
.dime-caption, .dime-notes { color: #57606a; max-width: 75em; margin: 0.3em 0; }
</style>"""


def to_html(frame: pd.DataFrame, caption: str, notes: list[str]) -> str:
    """The table as an HTML fragment: a ``div.dime-table`` with the caption, the table and the notes under it.

    Styled by :data:`HTML_STYLE`; :func:`html_page` makes it a page (the report shows ``.html`` outputs inline).
    """
    table = frame.to_html(index=False, border=0, na_rep="") if not frame.empty else "<p><em>(no rows)</em></p>"
    parts = ['<div class="dime-table">', f'<p class="dime-caption">{html.escape(caption)}</p>', table]
    if notes:
        parts.append('<ul class="dime-notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "\n".join([*parts, "</div>"])


def html_page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"{HTML_STYLE}\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def write_tables(stats: dict[str, Any], prefix: str | Path) -> list[Path]:
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, builder in (("aggregate", aggregate_table), ("per_task", per_task_table), ("poi", poi_table)):
        shown, machine, caption, notes = builder(stats)
        base = prefix.parent / f"{prefix.name}_{kind}"
        label = f"tab:{stats['study']}-{stats['experiment']}-{kind}".replace("_", "-")
        Path(f"{base}.md").write_text(to_markdown(shown, caption, notes))
        Path(f"{base}.tex").write_text(to_latex(shown, caption, notes, label))
        Path(f"{base}.html").write_text(html_page(caption.split(":")[0], to_html(shown, caption, notes)))
        machine.to_csv(f"{base}.csv", index=False)
        written += [Path(f"{base}.{ext}") for ext in ("md", "tex", "html", "csv")]
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stats", required=True)
    parser.add_argument("--prefix", required=True, help="e.g. results/quick/tables/main")
    args = parser.parse_args(argv)
    write_tables(json.loads(Path(args.stats).read_text()), args.prefix)


if __name__ == "__main__":
    main()
