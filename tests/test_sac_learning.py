"""SAC learns Pendulum-v1: a random policy scores about -1200 to -1500 per episode, a learned one above -300."""

import pytest

from dime.trainer import train


@pytest.mark.learning
def test_sac_learns_pendulum(tmp_path):
    summary = train(
        "sac",
        "gym/Pendulum-v1",
        seed=0,
        total_steps=6000,
        out_dir=tmp_path,
        eval_every=1000,
        agent_overrides={"learning_starts": 1000, "hidden": [64, 64]},
    )
    first = float((tmp_path / "eval.csv").read_text().splitlines()[1].split(",")[2])
    assert first < -900, "the untrained policy should be poor; otherwise the threshold proves nothing"
    assert summary["final_score"] > -300
