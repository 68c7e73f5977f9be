"""``python -m dime.evaluate`` reproduces a run's last evaluation from its checkpoint and renders a video."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np

from dime.trainer import read_eval_csv, train
from tests.conftest import REPO_ROOT

# DIME samples its evaluation actions, so reproducing its score needs the same policy noise as well as the same
# env seeds. No update follows the last evaluation (learning_starts = total steps): the checkpoint holds the policy
# that was evaluated. Hopper episodes of an untrained policy end after a dozen steps, with non-integer returns.
TINY_DIME = {
    "learning_starts": 200,
    "critic_width": 32,
    "score_width": 16,
    "diffusion_steps": 2,
    "num_atoms": 11,
    "batch_size": 32,
    "eval_episodes": 1,
}


def test_evaluate_reproduces_the_last_evaluation_and_writes_a_decodable_video(tmp_path):
    run = tmp_path / "run"
    train("dime", "gym/Hopper-v4", seed=0, total_steps=200, out_dir=run, eval_every=100, agent_overrides=TINY_DIME)
    logged = read_eval_csv(run / "eval.csv")[-1]
    video = tmp_path / "hopper.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "dime.evaluate", str(run), "--video", str(video), "--device", "cpu", "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "MUJOCO_GL"},  # dime.evaluate picks EGL itself
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert (report["eval_index"], report["checkpoint_step"], report["logged_step"]) == (2, 200, 200)
    assert report["score"] == float(logged["mean_return"]), "same policy, same env and policy seeds"
    assert report["episode_returns"] == logged["episode_returns"]

    frames = np.stack(list(imageio.get_reader(video).iter_data()))
    length = int(float(logged["mean_length"]))
    assert frames.shape == (length + 1, 480, 480, 3) == (report["video_frames"], 480, 480, 3)  # reset + every step
    assert frames.std() > 10, "an image, not a blank frame"
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 0.5, "the hopper moves"
