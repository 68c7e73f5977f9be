"""Faults and bad input: checkpoints sized by what they hold and verified on load, torn logs, range-checked
configs, the run directory's lock, signals during an evaluation, file modes. Workflow-level faults (study
overrides, killed Snakemake, SLURM absent, GPU study on a CPU machine) are in tests/test_workflow.py."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml

from baselines.sac import SAC
from dime.agents import Agent, ConfigError, load_algorithm
from dime.checkpoint import CheckpointError, load_checkpoint, locked_run_directory, save_checkpoint
from dime.replay import ReplayBuffer
from dime.tasks import get_task
from dime.train import main
from dime.trainer import Preempted, read_eval_csv, train
from tests.conftest import REPO_ROOT, run_cli, scaled, subprocess_env

PENDULUM = "gym/Pendulum-v1"
TINY_SAC = {"learning_starts": 100, "hidden": [16, 16], "batch_size": 16, "eval_episodes": 2}


def _files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (TensorBoard events included) by relative path, with its content."""
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny SAC run trained to 400 steps under umask 002 (a shared project directory's usual umask)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    previous = os.umask(0o002)
    try:
        train("sac", PENDULUM, seed=3, total_steps=400, out_dir=out, eval_every=300, log_every=100,
              agent_overrides=TINY_SAC)  # fmt: skip
    finally:
        os.umask(previous)
    return out


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_holds_only_the_filled_rows(tmp_path):
    buffer = ReplayBuffer(obs_dim=17, act_dim=6, capacity=100_000, device="cpu", seed=0)
    for i in range(10):
        buffer.add([i] * 17, [0.5] * 6, float(i), [i + 1] * 17, i == 9)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"buffer": buffer.state_dict()})
    assert path.stat().st_size < 1_000_000, f"{path.stat().st_size} bytes for 10 transitions"
    restored = ReplayBuffer(obs_dim=17, act_dim=6, capacity=100_000, device="cpu", seed=1)
    restored.load_state_dict(load_checkpoint(path, {})["buffer"])
    assert len(restored) == 10 and torch.equal(restored.next_obs[:10], buffer.next_obs[:10])
    assert torch.equal(restored.terminated[:10], buffer.terminated[:10])


def test_every_single_byte_corruption_is_refused_in_one_line(finished_run, tmp_path):
    checkpoint = finished_run / "checkpoint.pt"
    original = checkpoint.read_bytes()
    copy = tmp_path / "checkpoint.pt"
    rng = random.Random(0)
    for _ in range(100):
        damaged = bytearray(original)
        damaged[rng.randrange(len(damaged))] ^= rng.randrange(1, 256)
        copy.write_bytes(damaged)
        with pytest.raises(CheckpointError) as refused:
            load_checkpoint(copy, {})
        assert "\n" not in str(refused.value) and "is corrupt" in str(refused.value), str(refused.value)
    bare = tmp_path / "old.pt"
    torch.save({"format": 1, "step": 5}, bare)  # the first format: a bare torch.save archive
    with pytest.raises(CheckpointError, match="earlier version of this code"):
        load_checkpoint(bare, {})

    # The CLI: one line, exit status 2, and every file of the run directory byte for byte as it was.
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x10
    (run / "checkpoint.pt").write_bytes(damaged)
    before = _files(run)
    result = run_cli("--algo", "sac", "--task", PENDULUM, "--seed", "3", "--steps", "400", "--eval-every", "300",
                     "--out", str(run), "--set", *[f"{k}={json.dumps(v)}" for k, v in TINY_SAC.items()])  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: checkpoint {run / 'checkpoint.pt'} is corrupt (digest mismatch)")
    assert _files(run) == before


def test_torn_metrics_line_is_dropped_on_resume(finished_run, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 500, "steps_per_s": 12')  # a kill (or a full disk) in the middle of an append
    train("sac", PENDULUM, seed=3, total_steps=500, out_dir=run, eval_every=300, log_every=100,
          agent_overrides=TINY_SAC)  # fmt: skip
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [100, 200, 300, 400, 500]
    assert "dropped 1 unreadable line(s)" in capfd.readouterr().err


def test_files_follow_the_umask(finished_run):
    files = [path for path in finished_run.rglob("*") if path.is_file()]
    modes = {str(path.relative_to(finished_run)): stat.S_IMODE(path.stat().st_mode) for path in files}
    assert {"eval.csv", "summary.json", "checkpoint.pt", "config.yaml", "metrics.jsonl", ".lock"} <= modes.keys()
    assert {"progress.json"} <= modes.keys() and any(name.startswith("tensorboard/") for name in modes)
    assert set(modes.values()) == {0o664}, modes
    directories = [finished_run, *(path for path in finished_run.rglob("*") if path.is_dir())]
    assert {stat.S_IMODE(path.stat().st_mode) for path in directories} == {0o775}


# ------------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("algo", "overrides", "field"),
    [
        ("dime", {"alpha": -1}, "alpha"),
        ("dime", {"num_atoms": 1}, "num_atoms"),
        ("dime", {"v_min": 100, "v_max": -100}, "v_max"),
        ("dime", {"diffusion_steps": 0}, "diffusion_steps"),
        ("dime", {"score_width": 0}, "score_width"),
        ("dime", {"init_dt": 0}, "init_dt"),
        ("dime", {"adam_beta1": 1.0}, "adam_beta1"),
        ("dime", {"utd": 0}, "utd"),
        ("dime", {"eval_deterministic": True}, "eval_deterministic"),
        ("dime", {"batch_size": 0}, "batch_size"),
        ("dime", {"learning_starts": -5}, "learning_starts"),
        ("dime", {"eval_episodes": 0}, "eval_episodes"),
        ("dime", {"buffer_size": 0}, "buffer_size"),
        ("dime-gauss", {"log_std_min": 3.0}, "log_std_max"),
        ("dime-gauss", {"actor_layers": 0}, "actor_layers"),
        ("dime-gauss", {"lr_critic": float("nan")}, "lr_critic"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(algo, overrides, field):
    with pytest.raises(ConfigError) as refused:
        load_algorithm(algo).default_config(get_task(PENDULUM)).replace(**overrides)
    assert refused.value.key == field and f"invalid {field}=" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        ({"sac": {"batch_size": 0}}, "algorithms.sac.set.batch_size", "invalid batch_size=0 for SACConfig"),
        # Valid on Gym (support ±1600), not on DMC (±200): the line names the task it failed on.
        ({"dime": {"v_min": 300}}, "algorithms.dime.set", "(on dmc/pendulum-swingup)"),
    ],
)
def test_study_overrides_are_checked_when_the_study_is_read(tmp_path, overrides, key, message):
    sys.path.insert(0, str(REPO_ROOT / "workflow" / "scripts"))
    try:
        import studylib
    finally:
        sys.path.pop(0)
    study = yaml.safe_load((REPO_ROOT / "config" / "studies" / "smoke.yaml").read_text())
    for label, values in overrides.items():
        study["algorithms"][label]["set"].update(values)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(studylib.StudyError) as refused:
        studylib.load_study(path)
    assert str(refused.value).startswith(f"invalid study {path}: key '{key}': ") and message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_dime_alpha_zero_trains_without_entropy_term(tmp_path):
    """α = 0 is the fixed temperature 0 (the α ablation's limit), given through two --set flags that accumulate."""
    out = tmp_path / "run"
    tiny = ["critic_width=32", "score_width=16", "diffusion_steps=2", "batch_size=16", "eval_episodes=1"]
    argv = ["--algo", "dime", "--task", PENDULUM, "--steps", "60", "--eval-every", "1000", "--log-every", "20",
            "--out", str(out), "--quiet", "--set", "alpha=0", "learning_starts=20", "--set", *tiny]  # fmt: skip
    assert main(argv) == 0
    agent = yaml.safe_load((out / "config.yaml").read_text())["agent"]
    assert agent["alpha"] == 0.0 and agent["learning_starts"] == 20 and agent["critic_width"] == 32
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [20, 40, 60]
    assert [m["alpha"] for m in metrics[1:]] == [0.0, 0.0]
    assert all(math.isfinite(m["critic_loss"]) and math.isfinite(m["actor_loss"]) for m in metrics[1:])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "num_atoms=1"], "invalid num_atoms=1 for DIMEConfig"),
        (["--set", "eval_episodes=0"], "invalid eval_episodes=0"),
        (["--device", "cuda:99"], "device 'cuda:99' is not available"),
        (["--device", "cuda:x"], "unknown device 'cuda:x'"),
    ],
)
def test_bad_values_end_in_one_line_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        main(["--algo", "dime", "--task", PENDULUM, "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_cuda_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--algo", "sac", "--task", PENDULUM, "--out", str(tmp_path / "run"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device 'cuda' is not available" in err and "--device cpu" in err


class NaNAgent(Agent):
    """Acts with NaN, so every return is NaN: the summary must stay valid JSON."""

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return torch.full((obs.shape[0], self.act_dim), float("nan"))

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@pytest.mark.filterwarnings("ignore:.*WARN:")  # gymnasium's checker on NaN observations and rewards
def test_summary_never_holds_a_bare_nan(tmp_path):
    overrides = {"learning_starts": 0, "eval_episodes": 1}
    train("tests.test_faults:NaNAgent", PENDULUM, seed=0, total_steps=3, out_dir=tmp_path, agent_overrides=overrides)
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=pytest.fail)
    assert summary["final_score"] is None and summary["final_eval_step"] == 1


# ------------------------------------------------------------------------------------------ run directory lock
def test_second_training_on_the_same_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dime.train", "--threads", "1", "--algo", "sac", "--task", PENDULUM,
               "--steps", "1e6", "--out", str(out), "--quiet", "--set", "hidden=[8]"]  # fmt: skip
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + scaled(120)
        while not (out / ".lock").exists() or (out / ".lock").read_text() != f"{first.pid}\n":
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        with pytest.raises(SystemExit) as refused:
            main(["--algo", "sac", "--task", PENDULUM, "--steps", "1e6", "--out", str(out), "--set", "hidden=[8]"])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: {out} is in use by pid {first.pid}"), err
    finally:
        first.kill()  # SIGKILL: no chance to release anything
        first.wait(timeout=scaled(60))
    with locked_run_directory(out):  # the dead process's lock is taken over
        assert (out / ".lock").read_text() == f"{os.getpid()}\n"


# ------------------------------------------------------------------------------------------ signals
class SignalDuringEvaluation(SAC):
    """SAC that sends SIGTERM to its own process at the ``signal_at``-th evaluation action (deterministic act
    calls are SAC's evaluation), so the signal lands in the middle of an evaluation however fast the machine."""

    signal_at: ClassVar[int | None] = None
    calls: ClassVar[int] = 0
    signalled_at: ClassVar[tuple[int, float] | None] = None

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        if deterministic:
            cls = type(self)
            cls.calls += 1
            if cls.calls == cls.signal_at:
                cls.signalled_at = (cls.calls, time.monotonic())
                os.kill(os.getpid(), signal.SIGTERM)
        return super().act(obs, deterministic)


def test_signal_during_evaluation_abandons_it_and_resume_redoes_it(tmp_path, monkeypatch):
    algo = "tests.test_faults:SignalDuringEvaluation"
    kwargs = {"seed": 1, "total_steps": 400, "eval_every": 300, "agent_overrides": TINY_SAC}
    train(algo, PENDULUM, out_dir=tmp_path / "reference", **kwargs)

    # Evaluations at steps 1 and 300, 2 episodes of 200 steps each: call 500 is in the middle of the second one.
    monkeypatch.setattr(SignalDuringEvaluation, "signal_at", 500)
    monkeypatch.setattr(SignalDuringEvaluation, "calls", 0)
    run = tmp_path / "interrupted"
    with pytest.raises(Preempted) as stopped:
        train(algo, PENDULUM, out_dir=run, **kwargs)
    stopped_after = time.monotonic() - SignalDuringEvaluation.signalled_at[1]
    assert stopped.value.signum == signal.SIGTERM and stopped_after < 5
    assert SignalDuringEvaluation.calls <= 501, "the evaluation went on after the signal"
    assert [row["step"] for row in read_eval_csv(run / "eval.csv")] == ["1"], "the cut evaluation is not recorded"
    assert load_checkpoint(run / "checkpoint.pt", {})["step"] == 299, "checkpoint from before the evaluating step"

    monkeypatch.setattr(SignalDuringEvaluation, "signal_at", None)
    train(algo, PENDULUM, out_dir=run, **kwargs)
    assert (run / "eval.csv").read_text() == (tmp_path / "reference" / "eval.csv").read_text()
