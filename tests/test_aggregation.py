"""Aggregation against hand-computed values, rliable cross-checks, missing-seed reporting and tables (synthetic
scores; no training). The reproduction check is tested in tests/test_reproduction.py."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from rliable import library as rly
from rliable import metrics as rl_metrics

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "workflow" / "scripts"))
import aggregate
import make_plots
import make_tables
import matplotlib.pyplot as plt
import studylib

NORMALISATION = studylib.load_normalisation(REPO_ROOT / "config" / "normalisation.yaml")


# ------------------------------------------------------------------------------------- metrics by hand
def test_iqm_is_the_mean_of_the_middle_half():
    # 8 scores: drop the lowest 2 and highest 2 (int(0.25 * 8) = 2) -> mean(3, 4, 5, 6).
    assert aggregate.iqm(np.array([[1, 2, 3, 4], [5, 6, 7, 8]])) == pytest.approx(4.5)
    # The outlier 100 is trimmed: sorted 0 1 2 3 4 5 10 100 -> mean(2, 3, 4, 5) = 3.5 (the mean would be 15.6).
    assert aggregate.iqm(np.array([10, 0, 1, 2, 100, 3, 4, 5])) == pytest.approx(3.5)
    # 10 runs: int(2.5) = 2 trimmed per side -> mean(2..7) = 4.5.
    assert aggregate.iqm(np.arange(10.0)) == pytest.approx(4.5)
    # Per task along runs: column-wise IQM of 4 runs = mean of the middle two.
    runs = np.array([[1.0, 40.0], [2.0, 10.0], [3.0, 30.0], [100.0, 20.0]])
    assert aggregate.iqm_along_runs(runs) == pytest.approx([2.5, 25.0])


def test_aggregate_metrics_by_hand_and_against_rliable():
    scores = np.array([[0.2, 0.8], [0.4, 1.2], [0.6, 1.0]])  # 3 runs x 2 tasks
    iqm, median, mean, gap = aggregate.aggregate_metrics(scores)
    # sorted 0.2 .4 .6 .8 1.0 1.2, int(1.5) = 1 trimmed per side -> mean(.4, .6, .8, 1.0)
    assert iqm == pytest.approx(0.7)
    assert median == pytest.approx(0.7)  # task means 0.4 and 1.0
    assert mean == pytest.approx(0.7)
    assert gap == pytest.approx(1 - (0.2 + 0.8 + 0.4 + 1.0 + 0.6 + 1.0) / 6)  # 1.2 clipped to 1
    rng = np.random.default_rng(3)
    for shape in ((10, 7), (5, 3), (3, 1)):
        x = rng.normal(0.5, 0.4, shape)
        expected = [
            rl_metrics.aggregate_iqm(x),
            rl_metrics.aggregate_median(x),
            rl_metrics.aggregate_mean(x),
            rl_metrics.aggregate_optimality_gap(x),
        ]
        assert aggregate.aggregate_metrics(x) == pytest.approx(expected)


def test_probability_of_improvement_by_hand_and_against_rliable():
    # One task: x = {1, 3}, y = {2, 2}: of 4 pairs, x wins 2 -> 0.5.
    assert aggregate.probability_of_improvement(np.array([[1.0], [3.0]]), np.array([[2.0], [2.0]])) == 0.5
    # Ties count half: x = {2, 3}, y = {2, 1}: 2v2 tie, 2>1, 3>2, 3>1 -> 3.5 / 4.
    assert aggregate.probability_of_improvement(np.array([[2.0], [3.0]]), np.array([[2.0], [1.0]])) == 0.875
    # Averaged over tasks: task 1 gives 1.0 (x always higher), task 2 gives 0.0.
    x, y = np.array([[5.0, 0.0], [6.0, 1.0]]), np.array([[1.0, 7.0], [2.0, 8.0]])
    assert aggregate.probability_of_improvement(x, y) == 0.5
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, (10, 5)).astype(float), rng.integers(0, 4, (7, 5)).astype(float)  # many ties
    assert aggregate.probability_of_improvement(x, y) == pytest.approx(rl_metrics.probability_of_improvement(x, y))


def test_performance_profile_matches_rliable_score_distribution():
    x = np.random.default_rng(1).uniform(0, 1, (6, 4))
    taus = np.linspace(0, 1, 11)
    assert aggregate.score_distribution(x, taus) == pytest.approx(rly.score_distributions(x, taus))
    assert aggregate.score_distribution(np.array([[0.1, 0.5], [0.9, 0.3]]), np.array([0.0, 0.4, 1.0])) == pytest.approx(
        [1.0, 0.5, 0.0]
    )


def test_bootstrap_is_seeded_and_brackets_the_point():
    x = np.random.default_rng(2).normal(0, 1, (10, 3))
    first = aggregate.interval(x, aggregate.aggregate_metrics, reps=500, seed=7, confidence=0.95)
    np.random.seed(12345)  # global state in between must not matter: the call reseeds
    second = aggregate.interval(x, aggregate.aggregate_metrics, reps=500, seed=7, confidence=0.95)
    other = aggregate.interval(x, aggregate.aggregate_metrics, reps=500, seed=8, confidence=0.95)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not np.array_equal(first[1], other[1])
    point, lo, hi = first
    assert np.all(lo <= point) and np.all(point <= hi) and np.all(lo < hi)
    # rliable's own bootstrap with the same seed gives the same interval (we only swap in a faster metric).
    np.random.seed(7)
    _, cis = rly.get_interval_estimates({"x": x}, lambda s: np.array([rl_metrics.aggregate_iqm(s)]), reps=500)
    assert [lo[0], hi[0]] == pytest.approx(cis["x"][:, 0])


def test_normalisation_per_suite():
    assert studylib.normalise("dmc/dog-run", 629.0, NORMALISATION) == pytest.approx(0.629)
    assert studylib.normalise("myo/key-turn-hard", 0.8, NORMALISATION) == 0.8
    pendulum = NORMALISATION["gym"]["gym/Pendulum-v1"]
    assert studylib.normalise("gym/Pendulum-v1", pendulum["random"], NORMALISATION) == pytest.approx(0.0)
    assert studylib.normalise("gym/Pendulum-v1", pendulum["reference"], NORMALISATION) == pytest.approx(1.0)
    assert studylib.normalise("gym/Pendulum-v1", -701.45, NORMALISATION) == pytest.approx(0.5, abs=1e-3)


# --------------------------------------------------------------------------------- synthetic experiment
STUDY = {
    "seeds": 4,
    "eval_every": 500,
    "focus": "dime",
    "bootstrap": {"reps": 1000, "curve_reps": 100, "poi_reps": 100, "profile_reps": 100, "seed": 0},
    "resources": {"threads": 2},
    "algorithms": {"dime": {"algo": "dime"}, "sac": {"algo": "sac"}, "dipo": {"algo": "dipo", "name": "DIPO (ours)"}},
    "experiments": {
        "main": {
            "title": "Synthetic",
            "tasks": ["dmc/cheetah-run", "dmc/walker-run", "gym/Pendulum-v1"],
            "algorithms": ["dime", "sac", {"label": "dipo", "tasks": ["dmc/walker-run"]}],
            "steps": 1000,
        }
    },
}
# Final (step 1000) returns; the step-500 value is half of it.
FINAL = {
    ("dime", "dmc/cheetah-run"): [600.0, 500.0, 700.0, 550.0],
    ("dime", "dmc/walker-run"): [400.0, 450.0, 300.0, 800.0],
    ("dime", "gym/Pendulum-v1"): [-200.0, -180.0, -250.0, -160.0],
    ("sac", "dmc/cheetah-run"): [300.0, 200.0, 250.0, None],  # seed 3 missing
    ("sac", "dmc/walker-run"): [100.0, 150.0, math.nan, 120.0],  # seed 2 diverged
    ("sac", "gym/Pendulum-v1"): [-900.0, -800.0, -700.0, -1000.0],
    ("dipo", "dmc/walker-run"): [50.0, 60.0, 70.0, 80.0],
}
# Wall clock of seed k: (k + 1) quarter hours; dime ran on a GPU, the others on CPU (2 threads per job, see STUDY).
DEVICE = {"dime": "cuda:0", "sac": "cpu", "dipo": "cpu"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A study file, its long table and run status (one missing and one failed seed), and its statistics."""
    root = tmp_path_factory.mktemp("synthetic")
    (root / "study.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    study = studylib.load_study(root / "study.yaml", NORMALISATION)
    rows, status = [], []
    for (label, task), finals in FINAL.items():
        for seed, final in enumerate(finals):
            if final is None:
                status.append({"algorithm": label, "task": task, "seed": seed, "status": "missing", "detail": ""})
                continue
            ok = math.isfinite(final)
            status.append(
                {
                    "algorithm": label,
                    "task": task,
                    "seed": seed,
                    "status": "ok" if ok else "failed",
                    "detail": "" if ok else "non-finite final score nan",
                    "total_steps": 1000,
                    "wall_clock_s": 900.0 * (seed + 1),
                    "device": DEVICE[label],
                }
            )
            for step, score in ((1, final * 0.1), (500, final * 0.5), (1000, final)):
                rows.append(
                    {
                        "algorithm": label,
                        "task": task,
                        "seed": seed,
                        "step": step,
                        "score": score,
                        "normalised": studylib.normalise(task, score, NORMALISATION),
                    }
                )
    long, status = pd.DataFrame(rows), pd.DataFrame(status)
    stats = aggregate.experiment_stats(study, study.experiments[0], long, status)
    stats = json.loads(json.dumps(stats))  # what the table and plot scripts read back
    return root, study, long, stats


def test_per_task_iqm_and_absent_seeds(synthetic):
    _, _, _, stats = synthetic
    dmc = stats["suites"]["dmc"]["per_task"]
    cheetah = dmc["dime"]["dmc/cheetah-run"]
    assert cheetah["seeds_found"] == 4 and cheetah["absent"] == {}
    assert cheetah["iqm"][0] == pytest.approx(575.0)  # sorted 500 550 600 700 -> mean(550, 600)
    assert cheetah["iqm"][1] <= 575.0 <= cheetah["iqm"][2]
    sac_cheetah = dmc["sac"]["dmc/cheetah-run"]
    assert sac_cheetah["seeds_found"] == 3 and sac_cheetah["absent"] == {"3": "missing (not trained or not finished)"}
    assert sac_cheetah["iqm"][0] == pytest.approx(250.0)  # 3 values, int(0.75) = 0 trimmed -> mean
    sac_walker = dmc["sac"]["dmc/walker-run"]
    assert sac_walker["seeds"] == [0, 1, 3] and sac_walker["absent"]["2"].startswith("failed (non-finite")


def test_suite_aggregates_use_normalised_scores(synthetic):
    _, _, _, stats = synthetic
    dmc = stats["suites"]["dmc"]["aggregate"]
    # dime on DMC: 8 normalised scores; IQM = mean of the middle four of .3 .4 .45 .5 .55 .6 .7 .8
    assert dmc["dime"]["metrics"]["IQM"][0] == pytest.approx((0.45 + 0.5 + 0.55 + 0.6) / 4)
    assert dmc["dime"]["metrics"]["Mean"][0] == pytest.approx((587.5 + 487.5) / 2 / 1000)
    assert dmc["dime"]["runs_per_task"] == 4
    # sac has 3 finished seeds on both DMC tasks: aggregated over 3 runs per task, and says so only if counts differ.
    assert dmc["sac"]["runs_per_task"] == 3 and dmc["sac"]["seeds_expected"] == 4
    assert dmc["dipo"]["metrics"] == {} and "1 of 2 tasks" in dmc["dipo"]["note"]
    gym = stats["suites"]["gym"]["aggregate"]["dime"]["metrics"]
    ref = NORMALISATION["gym"]["gym/Pendulum-v1"]
    middle = np.mean([(r - ref["random"]) / (ref["reference"] - ref["random"]) for r in (-200.0, -180.0)])
    assert gym["IQM"][0] == pytest.approx(middle)
    assert gym["Optimality gap"][0] == pytest.approx(
        1
        - np.mean(
            [
                min(1.0, (r - ref["random"]) / (ref["reference"] - ref["random"]))
                for r in FINAL[("dime", "gym/Pendulum-v1")]
            ]
        )
    )


def test_probability_of_improvement_of_the_focus(synthetic):
    _, _, _, stats = synthetic
    poi = stats["suites"]["dmc"]["poi"]
    assert poi["sac"]["value"][0] == 1.0 and poi["sac"]["runs"] == [4, 3]
    assert poi["dipo"]["tasks"] == ["dmc/walker-run"] and poi["dipo"]["value"][0] == 1.0
    assert "dime" not in poi


def test_curves_and_profiles(synthetic):
    _, _, _, stats = synthetic
    curve = stats["suites"]["dmc"]["curves"]["dime"]
    assert curve["steps"] == [1, 500, 1000]
    assert curve["iqm"][-1] == pytest.approx(stats["suites"]["dmc"]["aggregate"]["dime"]["metrics"]["IQM"][0])
    task_curve = stats["suites"]["dmc"]["task_curves"]["sac"]["dmc/walker-run"]
    assert task_curve["seeds"] == 3 and task_curve["iqm"][1] == pytest.approx(0.5 * np.mean([100.0, 150.0, 120.0]))
    profiles = stats["suites"]["dmc"]["profiles"]
    assert set(profiles) == {"taus", "dime", "sac"}
    assert profiles["dime"]["profile"][0] == 1.0 and profiles["dime"]["profile"][-1] == 0.0


def test_tables_report_missing_seeds_and_bootstrap_settings(synthetic, tmp_path):
    _, _, _, stats = synthetic
    make_tables.write_tables(stats, tmp_path / "main")
    per_task = (tmp_path / "main_per_task.md").read_text()
    assert "3/4†" in per_task
    assert "SAC on dmc/cheetah-run (DeepMind Control): seed 3 missing" in per_task
    assert "seed 2 failed (non-finite final score nan)" in per_task
    assert "575 [" in per_task  # dime cheetah-run IQM in raw units
    aggregate_md = (tmp_path / "main_aggregate.md").read_text()
    assert "1,000 replications" in aggregate_md and "np.random.seed(0)" in aggregate_md
    assert "runs on 1 of 2 tasks" in aggregate_md
    latex = (tmp_path / "main_aggregate.tex").read_text()
    assert all(rule in latex for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\caption{", "\\label{"))
    assert "\\textsuperscript{\\dag}" in latex
    csv = pd.read_csv(tmp_path / "main_aggregate.csv")
    dime = csv[(csv["suite"] == "dmc") & (csv["algorithm"] == "dime")].iloc[0]
    assert dime["bootstrap_reps"] == 1000 and dime["bootstrap_seed"] == 0 and dime["seeds_used"] == 4
    assert dime["iqm_ci"].startswith("0.525 [")
    poi = pd.read_csv(tmp_path / "main_poi.csv")
    assert set(poi["y"]) == {"sac", "dipo"} and (poi["bootstrap_reps"] == 100).all()


def test_tables_show_display_names(synthetic, tmp_path):
    _, _, _, stats = synthetic
    make_tables.write_tables(stats, tmp_path / "main")
    aggregate_md = (tmp_path / "main_aggregate.md").read_text()
    assert "| DIME " in aggregate_md and "| SAC " in aggregate_md
    assert "DIPO (ours) (DeepMind Control): runs on 1 of 2 tasks" in aggregate_md
    assert "| dime " not in aggregate_md and "| sac " not in aggregate_md
    poi_md = (tmp_path / "main_poi.md").read_text()
    assert "P(DIME > SAC)" in poi_md and "P(DIME > DIPO (ours))" in poi_md
    per_task = pd.read_csv(tmp_path / "main_per_task.csv")
    assert dict(zip(per_task["algorithm"], per_task["name"], strict=False)) == {
        "dime": "DIME",
        "sac": "SAC",
        "dipo": "DIPO (ours)",
    }
    html = (tmp_path / "main_aggregate.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in html and "<td>DIME</td>" in html


def test_cost_per_label_from_wall_clock_and_device(synthetic, tmp_path):
    _, _, _, stats = synthetic
    dmc = stats["suites"]["dmc"]["cost"]
    # dime on DMC: 2 tasks x seeds 0-3 on a GPU, 0.25 (k + 1) h each -> 8 runs, 2 x 2.5 GPU-h.
    assert dmc["dime"] == {"GPU-h": {"runs": 8, "mean": pytest.approx(0.625), "total": pytest.approx(5.0)}}
    # sac on DMC, on CPU with 2 threads: cheetah seed 3 never finished (no wall clock), walker seed 2 failed (its
    # compute counts): hours 0.25, 0.5, 0.75 + 0.25, 0.5, 0.75, 1.0 = 4.0, x 2 threads.
    assert dmc["sac"] == {"CPU-h": {"runs": 7, "mean": pytest.approx(8.0 / 7), "total": pytest.approx(8.0)}}
    assert stats["suites"]["gym"]["cost"]["sac"]["CPU-h"]["total"] == pytest.approx(5.0)
    make_tables.write_tables(stats, tmp_path / "main")
    csv = pd.read_csv(tmp_path / "main_aggregate.csv").set_index(["suite", "algorithm"])
    sac, dime = csv.loc[("dmc", "sac")], csv.loc[("dmc", "dime")]
    assert sac["cpu_h_total"] == pytest.approx(8.0) and sac["cpu_h_runs"] == 7 and sac["gpu_h_runs"] == 0
    assert dime["gpu_h_per_run"] == pytest.approx(0.625) and dime["cpu_h_runs"] == 0
    md = (tmp_path / "main_aggregate.md").read_text()
    assert "| 1.14 CPU-h " in md and "| 8.00 CPU-h (7 runs) " in md and "| 5.00 GPU-h (8 runs) " in md
    assert "CPU-h = hours x 2 CPU threads per job" in md
    # Mixed devices list both units; the formatter keeps two or three significant digits.
    mixed = pd.DataFrame({"wall_clock_s": [3600.0, 7200.0, None], "device": ["cuda", "cpu", "cpu"]})
    assert make_tables.cost_cells(aggregate.compute_cost(mixed, threads=1)) == (
        "1.00 GPU-h + 2.00 CPU-h",
        "1.00 GPU-h (1 run) + 2.00 CPU-h (1 run)",
    )
    assert [make_tables.fmt_hours(h) for h in (0.00083, 0.047, 0.5, 2.345, 12.34, 1234.0)] == [
        "0.00083", "0.047", "0.50", "2.35", "12.3", "1,234",
    ]  # fmt: skip


def test_plots_show_display_names_step_ticks_and_reference_lines(synthetic, monkeypatch):
    _, study, _, stats = synthetic
    # Drawn, not written to PNG and PDF (the workflow tests check the files): tick labels exist once drawn.
    monkeypatch.setattr(make_plots, "_save", lambda fig, prefix, kind: fig.canvas.draw() or fig)
    colors = make_plots.label_colors(study.labels)
    figures = {plot.__name__: plot(stats, colors, Path("unused")) for plot in make_plots.PLOTS}
    try:
        curves = figures["learning_curves"].axes[0]
        assert [t.get_text() for t in curves.get_legend().get_texts()] == ["DIME (4)", "SAC (3)"]
        ticks = [t.get_text() for t in curves.get_xticklabels()]
        assert {"0", "400", "800", "1k"} <= set(ticks) and curves.xaxis.get_offset_text().get_text() == ""
        gym = figures["sample_efficiency"].axes[1]
        assert "published SAC (1.0)" in [t.get_text() for t in gym.get_legend().get_texts()]
        assert any(list(line.get_ydata()) == [1.0, 1.0] for line in gym.get_lines())
        intervals = figures["interval_estimates"].axes[0]
        assert [t.get_text() for t in intervals.get_yticklabels()] == ["DIME", "SAC"]
        poi = figures["poi"].axes[0]
        assert [t.get_text() for t in poi.get_yticklabels()] == ["P(DIME > SAC)", "P(DIME > DIPO (ours))"]
        assert any(list(line.get_xdata()) == [0.5, 0.5] for line in poi.get_lines())
        profiles = figures["performance_profiles"].axes[0]
        assert [t.get_text() for t in profiles.get_legend().get_texts()] == ["DIME", "SAC"]
    finally:
        for figure in figures.values():
            plt.close(figure)


def test_every_registered_algorithm_has_a_display_name():
    from dime.agents import ALGORITHMS

    assert set(studylib.ALGORITHM_NAMES) == set(ALGORITHMS)
    paper = studylib.load_study(REPO_ROOT / "config" / "studies" / "paper.yaml", check_registry=False)
    assert [paper.names[label] for label in ("dime", "bro-fast", "diffusion-ql", "consistency-ac", "dime-gauss")] == [
        "DIME", "BRO (Fast)", "Diffusion-QL", "Consistency-AC", "DIME-Gauss",
    ]  # fmt: skip
    assert paper.names["dime-alpha-1e-3"] == "DIME (α = 1e-3)" and len(set(paper.names.values())) == len(paper.names)


# ------------------------------------------------------------------------------------------ the schema
@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda s: s["experiments"]["main"].update(steps=-5), "experiments.main.steps"),
        (lambda s: s["experiments"]["main"].update(stepz=5), "experiments.main"),
        (lambda s: s["algorithms"]["dime"].pop("algo"), "algorithms.dime"),
        (lambda s: s["experiments"]["main"]["algorithms"].append("ghost"), "experiments.main.algorithms[3]"),
        (lambda s: s["experiments"]["main"]["tasks"].append("dmc/dog-rn"), "experiments.main.tasks[3]"),
        (lambda s: s["algorithms"]["sac"].update(algo="sacc"), "algorithms.sac.algo"),
        (lambda s: s.update(focus="nobody"), "focus"),
        (lambda s: s["bootstrap"].update(reps="many"), "bootstrap.reps"),
        (lambda s: s["experiments"]["main"]["tasks"].append("gym/Pusher-v4"), "experiments.main.tasks[3]"),
        (lambda s: s["algorithms"]["sac"].update(name="DIPO (ours)"), "algorithms.sac"),
    ],
)
def test_bad_studies_fail_with_one_line_naming_the_key(tmp_path, change, key):
    study = json.loads(json.dumps(STUDY))
    change(study)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(studylib.StudyError) as error:
        studylib.load_study(path, NORMALISATION)
    message = str(error.value)
    assert "\n" not in message and f"key '{key}'" in message and str(path) in message


def test_shared_runs_train_to_the_largest_budget(tmp_path):
    study = json.loads(json.dumps(STUDY))
    study["experiments"]["long"] = {"tasks": ["dmc/walker-run"], "algorithms": ["dime"], "steps": 3000, "seeds": 2}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    loaded = studylib.load_study(path, NORMALISATION)
    assert loaded.run("dime", "dmc/walker-run", 1).steps == 3000  # shared with "main" (1000 steps)
    assert loaded.run("dime", "dmc/walker-run", 3).steps == 1000  # seed 3 only in "main"
    assert loaded.run("dime", "dmc/cheetah-run", 0).steps == 1000
    assert len(loaded.runs) == 2 * 3 * 4 + 4  # dime and sac on 3 tasks, dipo on 1, 4 seeds; no duplicates
