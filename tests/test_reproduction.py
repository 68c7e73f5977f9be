"""The reproduction check: reference sources as data (config/reference.yaml), the verdict logic on hand-computed
synthetic curves in the DIME, BRO, CrossQ and SAC formats (grid matching, task-name map, any-step MyoSuite success),
the files fetched through the workflow from a local HTTP server (cache, checksums, no second download, a tampered
file, the offline copy), and `--profile slurm` planning the paper study. Nothing here touches the internet."""

from __future__ import annotations

import hashlib
import http.server
import json
import sys
import threading
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.test_workflow import copy_workflow, job_counts, ok, run_snakemake

sys.path.insert(0, str(REPO_ROOT / "workflow" / "scripts"))
import reference_data
import reproduction
import studylib

REFERENCE_ROOT = REPO_ROOT.parent / "shared" / "reference"
needs_reference_files = pytest.mark.skipif(
    not REFERENCE_ROOT.is_dir(), reason=f"the published reference files are not present at {REFERENCE_ROOT}"
)
REFERENCE = reference_data.load_reference_config(REPO_ROOT / "config" / "reference.yaml")
BOOTSTRAP = {"reps": 200, "curve_reps": 100, "poi_reps": 100, "profile_reps": 100, "seed": 0}
# A request that escapes the local server fails at once instead of reaching the internet.
OFFLINE_ENV = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "127.0.0.1",
               "NO_PROXY": "127.0.0.1", "http_proxy": "", "HTTP_PROXY": ""}  # fmt: skip


# ------------------------------------------------------------------------------------------- helpers
def write_study(path: Path, algorithms: dict, coverage: list, tasks: list[str], steps: int, **extra) -> Path:
    study = {"seeds": 4, "eval_every": 24000, "focus": next(iter(algorithms)), "bootstrap": BOOTSTRAP,
             "algorithms": algorithms, **extra}  # fmt: skip
    study["experiments"] = {"main": {"tasks": tasks, "algorithms": coverage, "steps": steps}}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def long_rows(label: str, task: str, steps: list[int], values: dict[int, list[float]], column: str = "score") -> list:
    """scores_long.csv rows: values[seed] holds one value per step."""
    rows = []
    for seed, series in values.items():
        for step, value in zip(steps, series, strict=True):
            row = {"algorithm": label, "task": task, "seed": seed, "step": step, "score": 0.0, "success_any": None}
            row[column] = value
            rows.append(row)
    return rows


def simbav2_csv(path: Path, rows: list[tuple[str, int, str, int, float]]) -> Path:
    """A file in the SimbaV2 layout from (env_name, seed, metric, env_step, value) rows."""
    frame = pd.DataFrame(rows, columns=["env_name", "seed", "metric", "env_step", "value"])
    frame.insert(0, "exp_name", "synthetic")
    frame.to_csv(path)
    return path


# ------------------------------------------------------------------------------------- matching, verdict
def test_steps_match_as_mutual_nearest_neighbours_within_half_a_grid_step():
    # DIME-style 24k grid against BRO's 25k (tolerance 12.5k): the first point (step 1) has no partner.
    ours = np.array([1, 24000, 48000, 72000, 96000])
    bro = np.array([25000, 50000, 75000, 100000])
    assert reproduction.match_steps(ours, bro, 12500) == [(1, 0), (2, 1), (3, 2), (4, 3)]
    # 288k and 312k are both 12k from 300k: the tie goes to the earlier step, and 300k pairs only once.
    assert reproduction.match_steps(np.array([288000, 312000]), np.array([275000, 300000, 325000]), 12500) == [(0, 1)]
    # CrossQ's 2k grid (tolerance 1k) against evaluations every 1k: 1000 and 3000 lose their ties to 1 and 2000.
    crossq = np.array([0, 2000, 4000])
    assert reproduction.match_steps(np.array([1, 1000, 2000, 3000]), crossq, 1000) == [(0, 0), (2, 1)]
    # SAC's Gym grid (16,666; tolerance 8,333): 24000 pairs with 16666 (7,334 apart), 48000 with 49998.
    sac = np.array([1, 16666, 33332, 49998])
    assert reproduction.match_steps(np.array([1, 24000, 48000]), sac, 8333) == [(0, 0), (1, 1), (2, 3)]
    assert reproduction.match_steps(np.array([5000]), np.array([25000]), 12500) == []


def test_verdict_compares_intervals():
    assert reproduction.verdict([10, 8, 12], [11, 9, 13]) == "consistent"
    assert reproduction.verdict([10, 8, 12], [14, 12, 16]) == "consistent"  # touching intervals overlap
    assert reproduction.verdict([5, 4, 6], [10, 9, 11]) == "lower"
    assert reproduction.verdict([20, 18, 22], [10, 9, 11]) == "higher"


# ------------------------------------------------------------------------------------------ source formats
def test_simbav2_files_are_read_through_the_explicit_task_map_on_the_declared_grid(tmp_path):
    bro = simbav2_csv(
        tmp_path / "bro.csv",
        [("dog-run", s, "avg_return", step, 10.0 * s + step / 25000) for s in (1, 2, 3) for step in (25000, 50000)]
        + [("dog_run", 1, "avg_return", 25000, -1.0), ("dog-run", 1, "avg_success", 25000, -1.0)],  # decoys
    )
    paths = {"simbav2_baselines/bro_utd10.csv": bro}
    steps, values = reference_data.load_curve(REFERENCE, "bro", "dmc/dog-run", paths)
    assert steps.tolist() == [25000, 50000]
    assert values.tolist() == [[11.0, 12.0], [21.0, 22.0], [31.0, 32.0]]

    # CrossQ: one seed starts at step 0, the others at 1; both fall on the first 2k grid point.
    crossq = simbav2_csv(
        tmp_path / "crossq.csv",
        [("Humanoid-v4", s, "avg_return", step, float(s)) for s in (0, 1000, 2000) for step in (1, 2000, 4000)]
        + [("Humanoid-v4", 9000, "avg_return", step, 9.0) for step in (0, 2000, 4000)],
    )
    paths = {"simbav2_baselines/crossq.csv": crossq}
    steps, values = reference_data.load_curve(REFERENCE, "crossq", "gym/Humanoid-v4", paths)
    assert steps.tolist() == [1, 2000, 4000] and values[:, 0].tolist() == [0.0, 1000.0, 2000.0, 9.0]

    # SAC spells it dog_run, on its own 50k grid; MyoSuite reads the success rows, not the returns.
    sac = simbav2_csv(
        tmp_path / "sac.csv",
        [("dog_run", s, "avg_return", float(step), float(s)) for s in (0, 1000) for step in (0, 50000, 100000)]
        + [("myo_key_turn_hard", s, m, float(step), v) for s in (0, 1000) for step in (0, 50000)
           for m, v in (("avg_success", 0.5), ("avg_return", 700.0))],
    )  # fmt: skip
    paths = {"simbav2_baselines/sac.csv": sac}
    assert reference_data.load_curve(REFERENCE, "sac", "dmc/dog-run", paths)[0].tolist() == [0, 50000, 100000]
    assert reference_data.load_curve(REFERENCE, "sac", "myo/key-turn-hard", paths)[1].tolist() == [[0.5, 0.5]] * 2

    # A file whose spacing is not the declared grid is refused in one line naming the curve.
    wrong = simbav2_csv(tmp_path / "wrong.csv", [("dog-run", 1, "avg_return", step, 1.0) for step in (10000, 20000)])
    with pytest.raises(reference_data.ReferenceDataError, match=r"'dog-run'.*every 10,000 env steps.*grid 25,000"):
        reference_data.load_curve(REFERENCE, "bro", "dmc/dog-run", {"simbav2_baselines/bro_utd10.csv": wrong})


def test_verdicts_for_bro_crossq_and_sac_against_hand_computed_iqms(tmp_path):
    """IQM of 4 seeds = mean of the middle two. BRO dog-run at 50k: seeds 100..400 -> 250; ours at 48k (the matching
    step) 240, 250, 260, 900 -> 255: consistent. BRO's MyoSuite success is any-step, so success_any is compared.
    CrossQ's last common step (4000) is before min_step: too early. SAC cheetah-run starts at 0 but our runs are far
    below it; walker-run for BRO starts at 25k, after our runs end."""
    published = tmp_path / "published"
    published.mkdir()
    simbav2_csv(
        published / "bro_utd10.csv",
        [("dog-run", s, "avg_return", 25000, 10.0 * s) for s in (1, 2, 3, 4)]
        + [("dog-run", s, "avg_return", 50000, 100.0 * s) for s in (1, 2, 3, 4)]
        + [("myo-key-turn-hard", s, "avg_success", step, v) for s, v in zip((1, 2, 3, 4), (0.8, 1, 1, 1), strict=True)
           for step in (25000, 50000)]
        + [("walker-run", s, "avg_return", step, 500.0) for s in (1, 2) for step in (25000, 50000)],
    )  # fmt: skip
    simbav2_csv(
        published / "crossq.csv",
        [("Humanoid-v4", s, "avg_return", step, 1000.0 * s + step) for s in (1, 2, 3, 4) for step in (0, 2000, 4000)],
    )
    simbav2_csv(
        published / "sac.csv",
        [("cheetah-run", s, "avg_return", float(step), 800.0 + s) for s in (0, 1, 2) for step in (0, 100000, 200000)],
    )
    manifest = {"files": [{"file": f"simbav2_baselines/{n}", "status": "verified", "path": str(published / n)}
                          for n in ("bro_utd10.csv", "crossq.csv", "sac.csv")]}  # fmt: skip

    algorithms = {"bro": {"algo": "bro"}, "crossq": {"algo": "crossq"}, "sac": {"algo": "sac"}}
    tasks = ["dmc/dog-run", "myo/key-turn-hard", "dmc/walker-run", "gym/Humanoid-v4", "dmc/cheetah-run"]
    coverage = [
        {"label": "bro", "tasks": ["dmc/dog-run", "myo/key-turn-hard", "dmc/walker-run"]},
        {"label": "crossq", "tasks": ["gym/Humanoid-v4", "dmc/dog-run"]},
        {"label": "sac", "tasks": ["dmc/cheetah-run"]},
    ]
    study = studylib.load_study(
        write_study(tmp_path / "study.yaml", algorithms, coverage, tasks, 48000, reproduction={"min_step": 40000}),
        check_registry=False,
    )
    seeds = (0, 1, 2, 3)
    dog_run = {s: [0, 30, v] for s, v in zip(seeds, (240, 250, 260, 900), strict=True)}
    rows = long_rows("bro", "dmc/dog-run", [1, 24000, 48000], dog_run)
    rows += long_rows("bro", "myo/key-turn-hard", [1, 24000, 48000], {s: [0, 0, 1.0] for s in seeds}, "success_any")
    rows += long_rows("bro", "dmc/walker-run", [1, 2500, 5000], {s: [0, 0, 0] for s in seeds})
    rows += long_rows("crossq", "gym/Humanoid-v4", [1, 2000, 4000], {s: [0, 0, 6000.0 + s] for s in seeds})
    rows += long_rows("sac", "dmc/cheetah-run", [1, 100000, 200000], {s: [0, 1, 2 + s] for s in (0, 1, 2)})
    checks = {(c.label, c.task): c for c in reproduction.run_checks(study, pd.DataFrame(rows), REFERENCE, manifest)}

    dog = checks[("bro", "dmc/dog-run")]
    assert (dog.step, dog.reference_step, dog.seeds_ours, dog.seeds_reference) == (48000, 50000, 4, 4)
    assert dog.ours[0] == pytest.approx(255.0) and dog.theirs[0] == pytest.approx(250.0)
    assert dog.verdict == "consistent" and dog.overlap == "1/1"
    matched = [(r["step"], r["reference_step"], r["verdict"]) for r in dog.steps]
    assert matched == [(24000, 25000, "too early"), (48000, 50000, "consistent")]
    assert dog.steps[0]["theirs"] == pytest.approx(25.0) and dog.steps[0]["ours"] == pytest.approx(30.0)

    key_turn = checks[("bro", "myo/key-turn-hard")]
    assert key_turn.column == "success_any" and key_turn.ours[0] == 1.0 and key_turn.theirs[0] == 1.0
    assert key_turn.verdict == "consistent" and "any step" in key_turn.detail

    walker = checks[("bro", "dmc/walker-run")]
    assert walker.verdict == "too early" and "end at 5,000" in walker.detail and "starts at 25,000" in walker.detail

    humanoid = checks[("crossq", "gym/Humanoid-v4")]
    assert humanoid.step == 4000 and humanoid.ours[0] == pytest.approx(6001.5)
    assert humanoid.theirs[0] == pytest.approx(6500.0) and humanoid.verdict == "too early"
    assert checks[("crossq", "dmc/dog-run")].verdict == "no published curve"  # crossq.csv: Gym only

    cheetah = checks[("sac", "dmc/cheetah-run")]
    assert (cheetah.step, cheetah.seeds_reference, cheetah.verdict) == (200000, 3, "lower")
    assert cheetah.ours[0] == pytest.approx(3.0) and cheetah.theirs[0] == pytest.approx(801.0)

    # The summary CSV i14b's report reads: one row per (label, task), plain columns.
    reproduction.write_tables(tmp_path / "tables", list(checks.values()), study, REFERENCE)
    summary = pd.read_csv(tmp_path / "tables" / "reproduction_summary.csv")
    assert list(summary.columns) == ["label", "display_name", "task", "source", "verdict", "step"]
    assert summary.set_index(["label", "task"]).loc[("bro", "dmc/dog-run"), "step"] == 48000
    assert "consistent (48,000)" in (tmp_path / "tables" / "reproduction_summary.md").read_text()


@needs_reference_files
def test_the_authors_own_seeds_are_consistent_and_a_shifted_copy_lower(tmp_path):
    """Our 'runs' are seeds 0-4 of the released dog-run curves: consistent at 984k; 300 lower: lower."""
    folder = REFERENCE_ROOT / "dime_paper_results" / "dmc_dog_run"
    steps, values = np.load(folder / "env_interacts.npy")[0], np.load(folder / "mean_return.npy")
    at_1m = steps <= 1_000_000
    study = studylib.load_study(
        write_study(tmp_path / "study.yaml", {"dime": {"algo": "dime"}}, ["dime"], ["dmc/dog-run"], 1000000),
        check_registry=False,
    )
    manifest = {"files": [{"file": f"dime_paper_results/dmc_dog_run/{n}", "status": "verified", "path": str(folder / n)}
                          for n in reference_data.DIME_NPY_FILES]}  # fmt: skip
    for shift, expected in ((0.0, "consistent"), (-300.0, "lower")):
        series = {s: list(values[s][at_1m] + shift) for s in range(5)}
        long = pd.DataFrame(long_rows("dime", "dmc/dog-run", [int(x) for x in steps[at_1m]], series))
        (check,) = reproduction.run_checks(study, long, REFERENCE, manifest)
        assert (check.step, check.reference_step, check.seeds_reference) == (984000, 984000, 10)
        assert check.verdict == expected


# ---------------------------------------------------------------------------------------- the data itself
def test_study_labels_map_to_sources_and_the_files_they_need():
    """Defaults: dime, bro, bro-fast, crossq, sac -> the source of that name. The paper study needs DIME's 13 task
    folders (two files each) and three SimbaV2 files; the quick study's tasks have no published curve at all."""
    paper = studylib.load_study(REPO_ROOT / "config" / "studies" / "paper.yaml", check_registry=False)
    checked = reference_data.checked_labels(paper, REFERENCE)
    assert checked == {"dime": "dime", "bro": "bro", "bro-fast": "bro-fast", "crossq": "crossq"}
    files = [f.relative for f in reference_data.needed_files(paper, REFERENCE)]
    assert len(files) == 13 * 2 + 3 and len(set(files)) == len(files)
    assert {f for f in files if f.startswith("simbav2")} == {
        f"simbav2_baselines/{n}" for n in ("bro_utd10.csv", "bro_utd2.csv", "crossq.csv")
    }
    assert reference_data.overlay_labels(paper, REFERENCE) == list(checked)
    quick = studylib.load_study(REPO_ROOT / "config" / "studies" / "quick.yaml", check_registry=False)
    assert reference_data.checked_labels(quick, REFERENCE) == {"dime": "dime", "sac": "sac", "crossq": "crossq"}
    assert reference_data.needed_files(quick, REFERENCE) == [] and reference_data.overlay_labels(quick, REFERENCE) == []

    quick.data["reproduction"]["references"]["sac"] = "td3"
    with pytest.raises(studylib.StudyError, match=r"key 'reproduction.references.sac': unknown reference source 'td3'"):
        reference_data.checked_labels(quick, REFERENCE)


def test_every_mapped_task_is_a_task_of_this_suite(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "disable")
    from dime.tasks import registry

    known = registry()
    for name, source in REFERENCE["sources"].items():
        unknown = [task for task in source["tasks"] if task not in known]
        assert not unknown, f"config/reference.yaml sources.{name}: {unknown}"


@needs_reference_files
def test_reference_files_match_their_pins_and_every_mapped_curve_is_on_its_grid():
    """The shared copies are byte-identical to the pinned SHA-256s, and every (source, task) of config/reference.yaml
    loads: the curve name exists in its file, and its spacing is the declared grid."""
    paths = {}
    for repository in REFERENCE["repositories"].values():
        for name, digest in repository["files"].items():
            path = REFERENCE_ROOT / repository["folder"] / name
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
            paths[f"{repository['folder']}/{name}"] = path
    for name, source in REFERENCE["sources"].items():
        for task in source["tasks"]:
            steps, values = reference_data.load_curve(REFERENCE, name, task, paths)
            assert values.shape[0] >= 2 and len(steps) >= 10 and np.isfinite(values).all(), (name, task)


# ------------------------------------------------------------------------------------ through the workflow
class ReferenceServer(http.server.ThreadingHTTPServer):
    """Serves the shared reference copies under the URL paths of their pinned URLs; counts every GET."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: Counter[str] = Counter()
        self.replaced: dict[str, bytes] = {}  # file name -> bytes served instead (a tampered upload)
        self.failures: Counter[str] = Counter()  # file name -> how many more requests get HTTP 503
        self.roots = {
            urllib.parse.urlsplit(r["base_url"]).path + "/": REFERENCE_ROOT / r["folder"]
            for r in REFERENCE["repositories"].values()
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ReferenceServer

    def do_GET(self) -> None:
        self.server.requests[self.path] += 1
        for prefix, root in self.server.roots.items():
            name = self.path.removeprefix(prefix)
            if self.path.startswith(prefix) and self.server.failures[name] > 0:
                self.server.failures[name] -= 1
                self.send_error(503)
                return
            if self.path.startswith(prefix) and (name in self.server.replaced or (root / name).is_file()):
                body = self.server.replaced.get(name) or (root / name).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def reference_server():
    server = ReferenceServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_downloads_retry_transient_failures_but_not_a_missing_file_or_a_silent_host(
    reference_server, tmp_path, monkeypatch
):
    monkeypatch.setattr(reference_data, "BACKOFF_S", (0.0, 0.0))
    repository = REFERENCE["repositories"]["simbav2"]

    def published(name: str, body: bytes) -> reference_data.ReferenceFile:
        digest = hashlib.sha256(body).hexdigest()
        return reference_data.ReferenceFile(name, f"{repository['base_url']}/{name}", digest, repository["folder"])

    reference_server.replaced["flaky.csv"] = b"published curve"
    reference_server.failures["flaky.csv"] = 2
    flaky, missing = published("flaky.csv", b"published curve"), published("missing.csv", b"")
    cache = tmp_path / "cache"
    manifest = reference_data.fetch([flaky, missing], REFERENCE["host"], cache, mirror=reference_server.url)
    got, lost = manifest["files"]
    assert got["status"] == "downloaded"
    assert (cache / "simbav2_baselines" / "flaky.csv").read_bytes() == b"published curve"
    assert lost["status"] == "failed" and "HTTP 404" in lost["error"]
    assert f"{reference_server.url}/dojeon-ai/SimbaV2/" in lost["error"]
    assert sorted(reference_server.requests.values()) == [1, 3]  # 404 is final; two 503s, then the file

    # A host that does not answer: the first file fails after every attempt, the rest are not tried (one reason).
    manifest = reference_data.fetch([missing, flaky], REFERENCE["host"], tmp_path / "c2", mirror="http://127.0.0.1:9")
    first, second = (e["error"] for e in manifest["files"])
    assert "missing.csv" in first and f"after {reference_data.ATTEMPTS} attempts" in first
    assert second == "reference files not downloaded: 127.0.0.1:9 did not answer (for simbav2_baselines/missing.csv)"
    assert reference_data.failure_lines(manifest) == [first, second]
    assert not list(tmp_path.rglob("*.part"))


def write_run(run_dir: Path, task: str, steps: list[int], returns: list[float]) -> None:
    """A finished run as the trainer leaves it: eval.csv and summary.json (written last)."""
    run_dir.mkdir(parents=True)
    lines = ["step,eval_index,mean_return,success_final,success_any,mean_length,episode_returns"]
    lines += [f"{s},{i},{r},,,1000.0,{r}" for i, (s, r) in enumerate(zip(steps, returns, strict=True))]
    (run_dir / "eval.csv").write_text("\n".join(lines) + "\n")
    summary = {"algo": run_dir.parts[-4], "task": task, "suite": task.split("/")[0], "metric": "return",
               "total_steps": steps[-1], "final_score": returns[-1], "final_eval_step": steps[-1],
               "wall_clock_s": 60.0, "env_steps_per_s": 100.0, "device": "cpu", "git_commit": "0" * 40,
               "git_dirty": False, "config_hash": "synthetic"}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))


@needs_reference_files
def test_reference_files_are_downloaded_once_verified_and_the_offline_copy_gives_the_same_tables(
    reference_server, tmp_path
):
    work = copy_workflow(tmp_path / "repo")
    algorithms = {"dime": {"algo": "dime"}, "bro": {"algo": "bro"}, "crossq": {"algo": "crossq"}}
    coverage = [{"label": "dime", "tasks": ["dmc/dog-run"]}, {"label": "bro", "tasks": ["dmc/dog-run"]},
                {"label": "crossq", "tasks": ["gym/Humanoid-v4"]}]  # fmt: skip
    write_study(work / "config" / "studies" / "refcheck.yaml", algorithms, coverage, ["dmc/dog-run", "gym/Humanoid-v4"],
                240000, seeds=3)  # fmt: skip
    # Runs: dime = the authors' own seeds 0-2 (consistent), bro = nothing learned (lower), crossq = 1e5 (higher).
    released = np.load(REFERENCE_ROOT / "dime_paper_results" / "dmc_dog_run" / "mean_return.npy")
    steps = [1, *range(24000, 240001, 24000)]
    runs = work / "results" / "refcheck" / "runs"
    for seed in range(3):
        write_run(runs / "dime" / "dmc" / "dog-run" / f"seed{seed}", "dmc/dog-run", steps, list(released[seed][:11]))
        write_run(runs / "bro" / "dmc" / "dog-run" / f"seed{seed}", "dmc/dog-run", steps, [0.0] * 11)
        write_run(runs / "crossq" / "gym" / "Humanoid-v4" / f"seed{seed}", "gym/Humanoid-v4", steps, [1e5] * 11)
    config = ["--config", "study=refcheck", "partial=true"]
    mirror = [f"reference_mirror={reference_server.url}"]
    results = work / "results" / "refcheck"
    manifest_path = results / "reference_files.json"
    cache = work / "resources" / "reference"

    # 1. The server hands out a tampered BRO file: it is rejected in one line naming it and its URL and is not
    #    stored; the three good files are downloaded and verified; everything else is produced, the BRO row says why.
    original = (REFERENCE_ROOT / "simbav2_baselines" / "bro_utd10.csv").read_bytes()
    reference_server.replaced["bro_utd10.csv"] = original.replace(b"dog-run", b"dog-sit", 1)
    output = ok(run_snakemake(work, "--cores", "2", *config, *mirror, env=OFFLINE_ENV))
    assert len(reference_server.requests) == 4 and set(reference_server.requests.values()) == {1}
    rejected = [line for line in output.splitlines() if "bro_utd10.csv" in line]
    assert len(rejected) == 1 and "SHA-256" in rejected[0], rejected
    assert f"{reference_server.url}/dojeon-ai/SimbaV2/" in rejected[0]
    assert not (cache / "simbav2_baselines" / "bro_utd10.csv").exists()
    entries = json.loads(manifest_path.read_text())["files"]
    statuses = {e["file"]: e["status"] for e in entries}
    assert statuses.pop("simbav2_baselines/bro_utd10.csv") == "failed" and set(statuses.values()) == {"downloaded"}
    for entry in entries:
        if entry["status"] == "downloaded":
            assert hashlib.sha256((cache / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    verdicts = pd.read_csv(results / "tables" / "reproduction_summary.csv").set_index("label")["verdict"]
    assert verdicts.to_dict() == {"dime": "consistent", "bro": "reference unavailable", "crossq": "higher"}
    assert rejected[0] in (results / "tables" / "reproduction.md").read_text()
    assert "Reproduction verdicts" in (results / "README.md").read_text()

    # 2. The fetch again, with the real file served: only the missing file is downloaded, verified ones stay.
    del reference_server.replaced["bro_utd10.csv"]
    ok(run_snakemake(work, "--cores", "2", "--forcerun", "fetch_reference", *config, *mirror, env=OFFLINE_ENV))
    assert sum(reference_server.requests.values()) == 5 and max(reference_server.requests.values()) == 2
    statuses = {e["file"]: e["status"] for e in json.loads(manifest_path.read_text())["files"]}
    assert statuses.pop("simbav2_baselines/bro_utd10.csv") == "downloaded" and set(statuses.values()) == {"cached"}
    summary = pd.read_csv(results / "tables" / "reproduction_summary.csv")
    verdicts = dict(zip(summary["label"], summary["verdict"], strict=True))
    assert verdicts == {"dime": "consistent", "bro": "lower", "crossq": "higher"} and (summary["step"] == 240000).all()
    assert "plots/reproduction_bro.png" in (results / "README.md").read_text()
    downloaded = {p.name: p.read_bytes() for p in (results / "tables").glob("reproduction*")}

    # 3. Offline: a local copy (reference_dir) is verified in place and gives the same tables; nothing is fetched.
    summary_path = str((results / "tables" / "reproduction_summary.csv").relative_to(work))
    ok(run_snakemake(work, "--cores", "1", summary_path, *config, f"reference_dir={REFERENCE_ROOT}", env=OFFLINE_ENV))
    assert sum(reference_server.requests.values()) == 5
    assert {e["status"] for e in json.loads(manifest_path.read_text())["files"]} == {"verified"}
    assert {p.name: p.read_bytes() for p in (results / "tables").glob("reproduction*")} == downloaded


# ------------------------------------------------------------------------------------------- the profile
def test_slurm_profile_runs_the_paper_study_unless_told_otherwise(tmp_path):
    """`snakemake --cores all --profile slurm`, typed exactly so, plans the paper study (no SLURM needed for -n);
    `--config study=smoke` picks another, and any other `--config` keeps the paper study."""
    work = copy_workflow(tmp_path / "repo")
    assert yaml.safe_load((work / "config" / "config.yaml").read_text())["study"] == "quick"  # without the profile
    paper = ok(run_snakemake(work, "--cores", "all", "--profile", "slurm", "-n"))
    counts = job_counts(paper)
    print(f"--profile slurm -n plans {counts['total']} jobs: {counts}")
    assert counts["train"] == 970 and counts["fetch_reference"] == 1 and "results/paper/README.md" in paper
    smoke = ok(run_snakemake(work, "--cores", "all", "--profile", "slurm", "-n", "--config", "study=smoke"))
    assert job_counts(smoke)["train"] == 8 and "results/smoke/" in smoke and "results/paper/" not in smoke
    # Any other --config keeps the paper study (a profile's `config:` list would be replaced by it).
    target = "results/paper/reference_files.json"
    partial = ok(run_snakemake(work, "--cores", "all", "--profile", "slurm", "-n", target, "--config", "partial=true"))
    assert job_counts(partial) == {"fetch_reference": 1, "total": 1}
