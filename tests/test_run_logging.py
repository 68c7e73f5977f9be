"""What a run reports while it trains: TensorBoard events, a W&B offline run, --quiet progress and resume lines,
a metrics row even for a run shorter than log_every; --config re-creating a run; --help; the noise filter."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dime.train import build_parser
from dime.train import main as train_main
from dime.trainer import read_eval_csv, train
from tests.conftest import REPO_ROOT

TINY_SAC = {"learning_starts": 100, "hidden": [32, 32], "batch_size": 32, "eval_episodes": 1}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """150 env steps (shorter than log_every), evaluations at steps 1 and 100, updates from step 101."""
    out = tmp_path_factory.mktemp("short") / "run"
    train("sac", "gym/Pendulum-v1", seed=2, total_steps=150, out_dir=out, eval_every=100, agent_overrides=TINY_SAC)
    return out


def test_short_run_has_a_metrics_row_and_tensorboard_events_with_the_logged_scalars(short_run):
    rows = [json.loads(line) for line in (short_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [150], "a run shorter than log_every still logs its last step"
    row = rows[0]
    events = EventAccumulator(str(short_run / "tensorboard"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    trained = {k: v for k, v in row.items() if k not in ("step", "steps_per_s")}
    assert {"critic_loss", "alpha"} <= trained.keys()
    for key, value in trained.items():
        assert scalars[f"train/{key.removeprefix('train_')}"] == [(150, pytest.approx(value, rel=1e-6))], key
    assert scalars["time/steps_per_s"] == [(150, pytest.approx(row["steps_per_s"], rel=1e-6))]
    evals = read_eval_csv(short_run / "eval.csv")
    assert scalars["eval/score"] == [(int(e["step"]), pytest.approx(float(e["mean_return"]))) for e in evals]
    assert [step for step, _ in scalars["eval/mean_length"]] == [1, 100]
    progress = json.loads((short_run / "progress.json").read_text())
    assert progress["state"] == "finished" and progress["step"] == progress["checkpoint_step"] == 150
    assert progress["last_eval_step"] == 100
    assert progress["last_score"] == pytest.approx(float(evals[-1]["mean_return"]))


def test_without_tensorboard_a_run_warns_once_and_logs_metrics_jsonl(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # a GPU node with only the training stack
    overrides = {**TINY_SAC, "learning_starts": 20}
    train("sac", "gym/Pendulum-v1", seed=0, total_steps=20, out_dir=tmp_path, eval_every=100, agent_overrides=overrides)
    assert capsys.readouterr().err.count("the tensorboard package is not installed") == 1
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "summary.json").exists()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [20]


def test_config_yaml_recreates_the_run(short_run, tmp_path):
    copy = tmp_path / "copy"
    args = ["--config", str(short_run / "config.yaml"), "--out", str(copy), "--quiet", "--threads", "1"]
    assert train_main(args) == 0
    assert (copy / "config.yaml").read_text() == (short_run / "config.yaml").read_text()
    assert (copy / "eval.csv").read_text() == (short_run / "eval.csv").read_text(), "same task, seed, steps, config"


def test_help_shows_every_option_with_its_meaning_and_default():
    parser = build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
    text = " ".join(parser.format_help().split())
    for expected in ("--eval-every EVAL_EVERY env steps between evaluations (default: 3000)", "(default: 1000000)"):
        assert expected in text


def _wandb_records(path: Path) -> list:
    """Records of a W&B transaction log (``run-<id>.wandb``): LevelDB log blocks of 32 KiB after a 7-byte header,
    each record split into chunks with a 7-byte header (crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, position, block = [], b"", 7, 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # block trailer padding
            position += block - position % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _progress_step(out: Path) -> int:
    path = out / "progress.json"
    return json.loads(path.read_text())["step"] if path.exists() else 0


def test_quiet_progress_lines_resume_line_and_wandb_offline_run(tmp_path):
    out, log = tmp_path / "run", tmp_path / "train.log"
    sets = [f"{k}={json.dumps(v)}" for k, v in TINY_SAC.items()]
    args = ["--algo", "sac", "--task", "gym/Pendulum-v1", "--steps", "800", "--eval-every", "250", "--log-every", "100"]
    args += ["--checkpoint-every", "100000", "--progress-every", "50", "--threads", "1", "--quiet"]
    args += ["--wandb", "dime-tests/lab", "--out", str(out), "--set", *sets]
    command = [sys.executable, "-m", "dime.train", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}  # offline by default
    env["PYTHONWARNINGS"] = "ignore"
    with log.open("w") as handle:  # as Snakemake runs it: --quiet >> train.log 2>&1
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 180
        while _progress_step(out) < 200:
            assert time.time() < deadline and process.poll() is None, log.read_text()[-2000:]
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
    with log.open("a") as handle:
        resumed = subprocess.run(command, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=300)
    text = log.read_text()
    assert resumed.returncode == 0, text[-2000:]

    stopped = int(re.search(r"received SIGTERM at env step (\d+); checkpoint written", text).group(1))
    assert stopped < 800
    first, second = text.split("rerun the same command to resume")
    assert "] start: sac on gym/Pendulum-v1 seed 0, 800 env steps" in first
    line = r"\] step (\d+)/800 \([\d.]+%\) \| eval -?[\d.e+]+ at step \d+ \| [\d.]+ env steps/s \| ETA \S+ "
    line += r"\(excluding evaluation\)"
    assert [int(m.group(1)) for m in re.finditer(line, first)][:4] == [50, 100, 150, 200]
    assert f"] resumed from env step {stopped} of 800: sac on gym/Pendulum-v1 seed 0" in second
    assert [int(m.group(1)) for m in re.finditer(line, second)][:2] == [stopped + 50, stopped + 100]
    assert "] finished: 800 env steps, final score" in second

    run_id = (out / "wandb_run_id").read_text().strip()
    offline_runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(d.name.endswith(f"-{run_id}") for d in offline_runs), "one W&B run, resumed"
    records = _wandb_records(offline_runs[0] / f"run-{run_id}.wandb")
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert [run.run_id, run.project, run.entity, run.display_name] == [
        run_id,
        "dime-tests",
        "lab",
        "sac on gym/Pendulum-v1 seed 0",
    ]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert [config[k] for k in ("algo", "task", "seed", "total_steps")] == ["sac", "gym/Pendulum-v1", 0, 800]
    assert config["agent"]["hidden"] == [32, 32] and config["provenance"]["versions"]["torch"].startswith("2.13.0")
    assert {"git_commit", "config_hash", "hardware"} <= config["provenance"].keys()
    history = [{item.key or "/".join(item.nested_key): item.value_json for item in r.history.item} for r in records]
    assert next(json.loads(h["env_step"]) for h in history if "eval/score" in h) == 1
    assert next(json.loads(h["env_step"]) for h in history if "train/critic_loss" in h) == 200  # updates from 101


def test_third_party_noise_is_filtered_and_other_warnings_kept(capfd):
    import gymnasium.logger
    import mujoco

    from dime._warnings import silence_third_party_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        previous = mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(None)
        try:
            silence_third_party_noise()
            gymnasium.logger.deprecation("The environment Hopper-v4 is out of date. You should consider upgrading.")
            gymnasium.logger.deprecation("Some other deprecation.")
            warnings.warn("Attaching a spec with an empty prefix may prevent the model from being saved", stacklevel=1)
            handler = mujoco.get_mju_user_warning()
            handler("Attaching a spec with an empty prefix may prevent the model from being saved correctly.")
            handler("Nan, Inf or huge value in QACC at DOF 0.")
        finally:
            mujoco.set_mju_user_warning(previous)
    assert [str(w.message) for w in caught] == ["\x1b[33mWARN: Some other deprecation.\x1b[0m"]
    assert capfd.readouterr().err == "WARNING: Nan, Inf or huge value in QACC at DOF 0.\n"
