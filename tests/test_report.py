"""What people read: the HTML report's landing page and inline tables, env-step ticks, and which study a
`snakemake --report PATH` documents. The end-to-end reports of the trained smoke study are checked in
tests/test_workflow.py (it owns the smoke fixture) with :func:`check_report` from here."""

from __future__ import annotations

import base64
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO_ROOT
from tests.test_workflow import copy_workflow, run_snakemake

sys.path.insert(0, str(REPO_ROOT / "workflow" / "scripts"))
import make_plots
import studylib


# ------------------------------------------------------------------------------------ reading a report
class _Tables(HTMLParser):
    """Every <table> of an HTML text as rows of cell texts (header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(text: str) -> list[pd.DataFrame]:
    parser = _Tables()
    parser.feed(text)
    return [pd.DataFrame(rows[1:], columns=rows[0]) for rows in parser.tables if rows]


def _report_variable(report: str, name: str) -> object:
    """A JSON value Snakemake's self-contained report assigns in its page script (``var name = ...;``; an object or
    a string, unlike the same names in the bundled libraries)."""
    match = re.search(rf"^\s*var {name} = ([{{\"].*);\s*$", report, re.MULTILINE)
    assert match, f"no `var {name}` in the report"
    return json.loads(match.group(1))


def landing_page(report: str) -> str:
    """The HTML of the report's landing page (the workflow description, rendered from workflow/report/workflow.rst)."""
    return str(_report_variable(report, "workflow_desc"))


def embedded_results(report: str) -> dict[str, tuple[str, bytes]]:
    """File name -> (MIME type, content) of every result embedded in the report."""
    out = {}
    for entry in dict(_report_variable(report, "results")).values():
        header, _, data = entry["data_uri"].partition(";base64,")
        out[entry["name"]] = (header.removeprefix("data:").split(";")[0], base64.b64decode(data))
    return out


def check_report(report_path: Path, results: Path, experiment: str = "main") -> None:
    """The landing page shows the experiment's aggregate table, equal to its CSV (display names, IQM CIs, cost),
    and the tables are embedded as HTML, so that the report shows them inline."""
    report = report_path.read_text()
    machine = pd.read_csv(results / "tables" / f"{experiment}_aggregate.csv")
    landing = landing_page(report)
    aggregates = [table for table in html_tables(landing) if "IQM" in table.columns]
    assert len(aggregates) == 1, "the landing page shows the experiment's aggregate table"
    shown = aggregates[0]
    assert len(shown) == len(machine)
    for row, expected in zip(shown.to_dict("records"), machine.to_dict("records"), strict=True):
        assert row["Algorithm"] == expected["name"] and row["IQM"] == expected["iqm_ci"]
        assert row["Optimality gap"] == expected["optimality_gap_ci"]
        assert row["Total cost"].endswith(f"CPU-h ({expected['cpu_h_runs']} runs)")
    assert "Measured:" in landing and "runs finished" in landing
    files = embedded_results(report)
    for kind in ("aggregate", "per_task", "poi"):
        mime, content = files[f"{experiment}_{kind}.html"]
        assert mime == "text/html" and html_tables(content.decode())
    assert not any(name.endswith(".csv") and name.startswith(experiment) for name in files)


# ---------------------------------------------------------------------------------------------- ticks
@pytest.mark.parametrize(
    ("steps", "label"),
    [(0, "0"), (1, "1"), (500, "500"), (1000, "1k"), (2500, "2.5k"), (24000, "24k"), (250000, "250k"),
     (1e6, "1M"), (1.5e6, "1.5M"), (3e6, "3M"), (-2000, "-2k")],
)  # fmt: skip
def test_env_step_ticks_read_k_and_m(steps, label):
    assert make_plots.format_steps(steps) == label


# ------------------------------------------------------------------------------- which study a report is
@pytest.mark.parametrize(
    ("argv", "path", "after_run"),
    [
        (["--report", "results/smoke/report.html"], "results/smoke/report.html", False),
        (["--report=results/x/r.html", "--cores", "1"], "results/x/r.html", False),
        (["--report", "--cores", "1"], "report.html", False),  # Snakemake's default path
        (["--cores", "1", "--report", "a.zip", "--report-after-run"], "a.zip", True),
    ],
)
def test_report_request_is_read_from_the_command_line(argv, path, after_run):
    assert studylib.report_request(argv) == studylib.ReportRequest(path, after_run)
    assert studylib.report_request(["--cores", "1", "--config", "study=quick"]) is None


def test_report_path_names_its_study(tmp_path):
    config = REPO_ROOT / "config"
    assert studylib.report_study("results/smoke/report.html", "results", "quick", False, config) == "smoke"
    assert studylib.report_study("results/smoke/report.html", "results", "smoke", True, config) == "smoke"
    path = str(config / "studies" / "smoke.yaml")
    assert studylib.report_study("results/smoke/report.html", "results", path, True, config) == path
    assert studylib.report_study(str(tmp_path / "report.html"), "results", "quick", False, config) == "quick"
    with pytest.raises(studylib.StudyError, match="lies in the results of study 'smoke' but --config study=quick"):
        studylib.report_study("results/smoke/report.html", "results", "quick", True, config)
    with pytest.raises(studylib.StudyError, match="'nosuch' is not a study under config/studies/"):
        studylib.report_study("results/nosuch/report.html", "results", "quick", False, config)


def test_report_of_another_study_fails_in_one_line(tmp_path):
    """`--report results/smoke/...` with `--config study=quick` would write the quick study's report there."""
    work = copy_workflow(tmp_path / "repo")
    result = run_snakemake(work, "--report", "results/smoke/report.html", "--config", "study=quick", timeout=120)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("--report results/smoke/report.html lies in the results of study 'smoke'")
    assert not (work / "results" / "smoke" / "report.html").exists()


def test_report_of_a_study_without_results_says_what_to_run(tmp_path):
    work = copy_workflow(tmp_path / "repo")
    result = run_snakemake(work, "--report", "results/smoke/report.html", timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()][-1]
    assert last.startswith("cannot build the report of study smoke:") and "--config study=smoke" in last


def test_landing_page_shows_the_reproduction_verdicts_when_present(tmp_path):
    import write_index

    study = studylib.load_study(REPO_ROOT / "config" / "studies" / "smoke.yaml", check_registry=False)
    assert "No reproduction summary" in write_index.reproduction_summary_html(study, tmp_path)
    (tmp_path / "tables").mkdir()
    verdicts = pd.DataFrame(
        {
            "label": ["dime"],
            "display_name": ["DIME"],
            "task": ["dmc/pendulum-swingup"],
            "source": ["dime"],
            "verdict": ["consistent"],
            "step": [600],
        }
    )
    verdicts.to_csv(tmp_path / "tables" / "reproduction_summary.csv", index=False)
    (table,) = html_tables(write_index.reproduction_summary_html(study, tmp_path))
    assert table.to_dict("records") == [
        {
            "Algorithm": "DIME",
            "Task": "dmc/pendulum-swingup",
            "Source": "dime",
            "Verdict": "consistent",
            "Env step": "600",
        }
    ]
