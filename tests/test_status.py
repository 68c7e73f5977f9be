"""``python -m dime.status`` on a half-finished smoke study, and runs.csv showing a running run's step."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from dime.run_lock import LOCK_FILE, run_lock_holder
from dime.status import main as status_main
from dime.status import run_status
from dime.train import main as train_main
from dime.trainer import train
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "workflow" / "scripts"))
import collect
import studylib

SMOKE = REPO_ROOT / "config" / "studies" / "smoke.yaml"


def _table(text: str) -> dict[tuple[str, str, str], dict[str, str]]:
    """Rows of the status table by (label, task, seed), split on the header's column starts."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("label "))
    names = lines[header].split()
    starts = [lines[header].index(name) for name in names]
    rows = {}
    for line in lines[header + 1 : -1]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
        row = dict(zip(names, cells))
        rows[(row["label"], row["task"], row["seed"])] = row
    return rows


def _args(run: studylib.Run, out, steps: int) -> list[str]:
    return [
        "--algo",
        run.algo,
        "--task",
        run.task,
        "--seed",
        str(run.seed),
        "--steps",
        str(steps),
        "--eval-every",
        "300",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(out),
        "--set",
        *studylib.override_args(run.overrides),
    ]


def test_status_of_a_half_finished_smoke_study(tmp_path, capsys):
    study = studylib.load_study(SMOKE, check_registry=False)
    results = tmp_path / "smoke"  # the results directory's name selects config/studies/smoke.yaml
    runs = results / "runs"
    finished = study.run("sac", "gym/Pendulum-v1", 0)
    running = study.run("sac", "gym/Pendulum-v1", 1)
    failing = study.run("dime", "gym/Pendulum-v1", 0)

    train(
        finished.algo,
        finished.task,
        finished.seed,
        finished.steps,
        finished.directory(runs),
        dict(finished.overrides),
        eval_every=300,
    )
    # A real training process, in the study's layout, with a budget it will not reach before it is stopped.
    running_dir = running.directory(runs)
    running_dir.mkdir(parents=True)
    with (running_dir / "train.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dime.train", *_args(running, running_dir, 100_000)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    try:
        deadline = time.time() + 120
        while (
            not (running_dir / "progress.json").exists()
            or json.loads((running_dir / "progress.json").read_text())["step"] < 1
        ):
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.02)
        process.send_signal(signal.SIGSTOP)  # frozen, so that the step it reports stays put
        # A run that fails: its checkpoint is corrupt, and dime.train says so in its log.
        failing_dir = failing.directory(runs)
        failing_dir.mkdir(parents=True)
        (failing_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
        with (failing_dir / "train.log").open("w") as log, contextlib.redirect_stderr(log), pytest.raises(SystemExit):
            train_main(_args(failing, failing_dir, failing.steps))

        capsys.readouterr()
        assert status_main([str(results)]) == 0
        output = capsys.readouterr().out
        rows = _table(output)
        assert len(rows) == len(study.runs) == 8
        step = json.loads((running_dir / "progress.json").read_text())["step"]
        assert rows[("sac", "gym/Pendulum-v1", "0")]["state"] == "finished"
        assert rows[("sac", "gym/Pendulum-v1", "0")]["step"] == "600/600"
        final = json.loads((finished.directory(runs) / "summary.json").read_text())["final_score"]
        assert rows[("sac", "gym/Pendulum-v1", "0")]["score"] == f"{final:.4g}"
        assert rows[("sac", "gym/Pendulum-v1", "1")]["state"] == "running"
        assert rows[("sac", "gym/Pendulum-v1", "1")]["step"] == f"{step}/600"
        assert rows[("sac", "gym/Pendulum-v1", "1")]["detail"] == f"pid {process.pid}"
        assert rows[("dime", "gym/Pendulum-v1", "0")]["state"] == "failed"
        assert "is corrupt" in rows[("dime", "gym/Pendulum-v1", "0")]["detail"]
        others = [key for key in rows if key[1] != "gym/Pendulum-v1" or key == ("dime", "gym/Pendulum-v1", "1")]
        assert len(others) == 5 and all(rows[key]["state"] == "not started" for key in others)
        assert "8 runs: 1 finished, 1 running, 1 failed, 5 not started" in output.splitlines()[-1]

        # The partial tables: runs.csv shows the running run's step instead of "missing".
        normalisation = str(REPO_ROOT / "config" / "normalisation.yaml")
        outputs = ["--long", str(tmp_path / "long.csv"), "--manifest", str(tmp_path / "provenance.json")]
        outputs += ["--status", str(tmp_path / "runs.csv")]
        collect.main(["--study", str(SMOKE), "--runs-dir", str(runs), "--normalisation", normalisation, *outputs])
        table = pd.read_csv(tmp_path / "runs.csv").set_index(["algorithm", "task", "seed"])
        assert table.loc[("sac", "gym/Pendulum-v1", 1), "status"] == "running"
        assert table.loc[("sac", "gym/Pendulum-v1", 1), "detail"].startswith(f"at env step {step} of 600")
        assert table.loc[("sac", "gym/Pendulum-v1", 0), "status"] == "ok"
        assert table.loc[("dime", "gym/Pendulum-v1", 0), "status"] == "failed"
        assert (table["status"] == "missing").sum() == 5

        process.send_signal(signal.SIGTERM)  # handled when it continues: checkpoint, then exit
        process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    checkpoint_step = json.loads((running_dir / "progress.json").read_text())["checkpoint_step"]
    assert f"received SIGTERM at env step {checkpoint_step}" in (running_dir / "train.log").read_text()
    state = run_status(running_dir, running.steps)
    assert (state.state, state.step) == ("resumable", checkpoint_step)
    assert status_main([str(results), "--only", "resumable"]) == 0
    output = capsys.readouterr().out
    assert list(_table(output)) == [("sac", "gym/Pendulum-v1", "1")]
    assert _table(output)[("sac", "gym/Pendulum-v1", "1")]["state"] == f"resumable at {checkpoint_step}"


def test_a_held_run_lock_means_running(tmp_path):
    from dime.checkpoint import LOCK_NAME, locked_run_directory

    assert LOCK_FILE == LOCK_NAME
    with locked_run_directory(tmp_path):
        assert run_lock_holder(tmp_path) == os.getpid()
    (tmp_path / LOCK_FILE).write_text(f"{os.getpid()}\n")
    assert run_lock_holder(tmp_path) is None
    with (tmp_path / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_lock_holder(tmp_path) == os.getpid()
        assert run_status(tmp_path, 100).state == "running"
        fcntl.flock(handle, fcntl.LOCK_UN)
    assert run_lock_holder(tmp_path) is None
    assert run_status(tmp_path, 100).state == "not started"
