"""The training loop: outputs, evaluation schedule, exact resumption after kills, refusing foreign checkpoints."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

from dime.trainer import train
from tests.conftest import REPO_ROOT, run_cli, scaled, subprocess_env

PENDULUM = "gym/Pendulum-v1"
SAC_PENDULUM = ["--algo", "sac", "--task", PENDULUM]
TINY_SAC = ["--set", "learning_starts=300", "hidden=[32,32]", "batch_size=64"]


def test_outputs_and_eval_schedule(tmp_path):
    summary = train(
        "sac",
        "gym/Pendulum-v1",
        seed=1,
        total_steps=900,
        out_dir=tmp_path,
        eval_every=400,
        log_every=200,
        agent_overrides={"learning_starts": 300, "hidden": [32, 32], "eval_episodes": 2},
    )
    rows = (tmp_path / "eval.csv").read_text().splitlines()
    assert rows[0] == "step,eval_index,mean_return,success_final,success_any,mean_length,episode_returns"
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "400", "800"]
    assert all(len(r.split(",")[-1].split()) == 2 for r in rows[1:]), "two episodes per evaluation"
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [200, 400, 600, 800, 900], "every log interval and the last step"
    assert {"critic_loss", "alpha", "steps_per_s"} <= metrics[-1].keys()
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["agent"]["hidden"] == [32, 32] and config["agent"]["gamma"] == 0.99
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for key in (
        "final_score",
        "wall_clock_s",
        "env_steps_per_s",
        "updates_per_s",
        "device",
        "versions",
        "git_commit",
        "config_hash",
        "hardware",
    ):
        assert key in saved, key
    assert saved["versions"]["torch"].startswith("2.13.0")
    assert saved["total_steps"] == 900 and saved["final_eval_step"] == 800


def _killed_until_done(args, out, rng):
    """Start the run and SIGKILL it at a random moment after its next checkpoint; restart until it finishes.

    Killing relative to checkpoint writes (not wall time) guarantees progress however slow the machine is, while
    the random extra delay lands the kill at arbitrary points between checkpoints (mid-episode included).
    """
    kills = 0
    checkpoint = out / "checkpoint.pt"
    while not (out / "summary.json").exists():
        seen = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "dime.train", "--threads", "1", *args, "--out", str(out), "--quiet"],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=subprocess_env(),
        )
        while proc.poll() is None and (not checkpoint.exists() or checkpoint.stat().st_mtime_ns == seen):
            time.sleep(0.05)
        try:
            proc.wait(timeout=rng.uniform(0.0, 1.5))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        assert kills < 60, "run never finished"
    return kills


@pytest.mark.parametrize(
    ("task", "steps", "checkpoint_every"),
    [("gym/Pendulum-v1", 2400, 170), ("dmc/cartpole-swingup", 2600, 230)],
)
def test_sigkill_and_resume_gives_identical_eval_csv(tmp_path, task, steps, checkpoint_every):
    args = [
        "--algo",
        "sac",
        "--task",
        task,
        "--steps",
        str(steps),
        "--eval-every",
        "500",
        "--seed",
        "4",
        "--checkpoint-every",
        str(checkpoint_every),
        *TINY_SAC,
    ]
    reference = tmp_path / "reference"
    result = run_cli(*args, "--out", str(reference), "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    interrupted = tmp_path / "interrupted"
    kills = _killed_until_done(args, interrupted, rng=random.Random(0))
    assert kills >= 1, "the run was never interrupted; the test proves nothing"
    assert (interrupted / "eval.csv").read_text() == (reference / "eval.csv").read_text()
    steps_logged = [json.loads(x)["step"] for x in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == sorted(set(steps_logged)), "metrics rows after the checkpoint are not duplicated"


def test_sigterm_checkpoints_and_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    args = [
        "--algo",
        "sac",
        "--task",
        "gym/Pendulum-v1",
        "--steps",
        "4000",
        "--eval-every",
        "1000",
        "--checkpoint-every",
        "100000",
        *TINY_SAC,
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dime.train", "--threads", "1", *args],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    deadline = time.time() + scaled(300)
    while not (out / "eval.csv").exists() or len((out / "eval.csv").read_text().splitlines()) < 3:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=scaled(60))
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM" in stderr and "rerun the same command to resume" in stderr
    assert (out / "checkpoint.pt").exists() and not (out / "summary.json").exists()
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["total_steps"] == 4000
    again = run_cli(*args)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_corrupt_or_foreign_checkpoint_is_refused(tmp_path):
    out = tmp_path / "run"
    base = [
        "--algo",
        "sac",
        "--task",
        "gym/Pendulum-v1",
        "--steps",
        "400",
        "--eval-every",
        "200",
        "--quiet",
        "--set",
        "learning_starts=100",
        "hidden=[16,16]",
    ]
    assert run_cli(*base, "--out", str(out)).returncode == 0
    (out / "summary.json").unlink()
    eval_before = (out / "eval.csv").read_text()
    other = run_cli(*base[:-2], "hidden=[16,16]", "gamma=0.9", "--out", str(out))
    assert other.returncode == 2
    assert other.stderr.count("\n") == 1 and "belongs to another run" in other.stderr
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    corrupt = run_cli(*base, "--out", str(out))
    assert corrupt.returncode == 2 and "corrupt" in corrupt.stderr and corrupt.stderr.count("\n") == 1
    assert (out / "eval.csv").read_text() == eval_before, "nothing already written was touched"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algo", "sacc", "--task", PENDULUM], "unknown algorithm 'sacc'; valid choices: sac, dime"),
        (["--algo", "sac", "--task", "gym/Pendulm-v1"], "close matches: gym/Pendulum-v1"),
        ([*SAC_PENDULUM, "--steps", "-5"], "expected a positive integer, got '-5'"),
        ([*SAC_PENDULUM, "--steps", "1.5e3x"], "expected a positive integer"),
        ([*SAC_PENDULUM, "--seed", "-1"], "non-negative integer seed"),
        ([*SAC_PENDULUM, "--set", "lr=3"], "unknown config key 'lr' for SACConfig"),
        ([*SAC_PENDULUM, "--set", "tau=fast"], "'tau' expects float, got 'fast'"),
        ([*SAC_PENDULUM, "--set", "tau"], "--set expects key=value"),
        ([*SAC_PENDULUM, "--device", "tpu"], "unknown device 'tpu'"),
        ([*SAC_PENDULUM, "--compile", "fast"], "invalid choice: 'fast' (choose from 'off', 'on', 'cudagraphs')"),
        ([*SAC_PENDULUM, "--device", "cpu", "--compile", "cudagraphs"], "'cudagraphs' needs a CUDA device"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    result = run_cli(*args, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_unwritable_output_and_malformed_config(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    base = SAC_PENDULUM
    try:
        if not os.access(locked, os.W_OK):
            result = run_cli(*base, "--out", str(locked / "run"))
            assert result.returncode == 2 and "not writable" in result.stderr
        else:  # root ignores permission bits: a path under a regular file is unwritable for everyone
            blocker = tmp_path / "file"
            blocker.write_text("x")
            result = run_cli(*base, "--out", str(blocker / "run"))
            assert result.returncode == 2 and "is not a directory" in result.stderr
    finally:
        locked.chmod(0o700)
    bad = tmp_path / "bad.yaml"
    bad.write_text("hidden: [1, 2\n")
    result = run_cli(*base, "--out", str(tmp_path / "r"), "--config", str(bad))
    assert result.returncode == 2 and "not valid YAML" in result.stderr and result.stderr.count("\n") == 1
    bad.write_text("- 1\n- 2\n")
    result = run_cli(*base, "--out", str(tmp_path / "r"), "--config", str(bad))
    assert result.returncode == 2 and "must hold a mapping" in result.stderr
