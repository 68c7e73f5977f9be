"""CrossQ, BRO and BRO (Fast) run on the DMC and MyoSuite suites and learn Pendulum-v1 through
:func:`dime.trainer.train`.

A random policy scores about -1200 to -1500 per 200-step episode, a learned one above -200. Test configs shrink the
networks (and BRO's quantile count and batch) and start learning earlier; every algorithmic setting is the preset's
own, in particular the UTD (CrossQ 1, BRO 10, BRO-Fast 2) and CrossQ's policy delay, which the tests check in the
resolved ``config.yaml``.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from dime.trainer import read_eval_csv, train

_SMALL_BRO = {"critic_width": 32, "actor_width": 32, "n_quantiles": 10, "batch_size": 64}

#: algo -> (env steps, overrides, UTD the preset must keep). Budgets measured at about 25-90 s on a shared core.
LEARNING = {
    "crossq": (5000, {"critic_hidden": [64, 64], "actor_hidden": [64, 64], "learning_starts": 1000}, 1),
    "bro": (1300, {**_SMALL_BRO, "learning_starts": 300}, 10),
    "bro-fast": (3400, {**_SMALL_BRO, "learning_starts": 500}, 2),
}


@pytest.mark.learning
@pytest.mark.parametrize("algo", list(LEARNING))
def test_learns_pendulum(algo, tmp_path):
    steps, overrides, utd = LEARNING[algo]
    summary = train(
        algo,
        "gym/Pendulum-v1",
        seed=0,
        total_steps=steps,
        out_dir=tmp_path,
        eval_every=steps,  # evaluations at step 1 (untrained) and at the end
        agent_overrides=overrides,
        device="cpu",
    )
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text())["agent"]
    assert resolved["utd"] == utd
    if algo == "crossq":
        assert resolved["policy_delay"] == 3 and resolved["adam_b1"] == 0.5
    else:
        assert resolved["pessimism"] == 0.0 and resolved["kl_target"] == 0.05
    rows = read_eval_csv(tmp_path / "eval.csv")
    assert float(rows[0]["mean_return"]) < -900, "the untrained policy should be poor; otherwise the bar proves little"
    assert summary["final_score"] > -400, f"{algo} did not learn Pendulum: {[r['mean_return'] for r in rows]}"


@pytest.mark.parametrize("task", ["dmc/cheetah-run", "myo/reach-hard"])
@pytest.mark.parametrize(
    ("algo", "overrides"),
    [
        ("crossq", {"critic_hidden": [32, 32], "actor_hidden": [32, 32]}),
        ("bro", {"critic_width": 32, "actor_width": 32, "n_quantiles": 10, "batch_size": 32, "utd": 2}),
    ],
)
def test_runs_through_the_trainer_on_dmc_and_myosuite(algo, overrides, task, tmp_path):
    """A few updates on larger observation/action spaces; every logged agent metric is finite."""
    summary = train(
        algo,
        task,
        seed=0,
        total_steps=120,
        out_dir=tmp_path,
        eval_every=10_000,  # only the step-1 evaluation
        log_every=120,
        agent_overrides={**overrides, "learning_starts": 100, "eval_episodes": 1},
        device="cpu",
    )
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    metrics = {k: v for k, v in row.items() if k not in ("step", "steps_per_s", "train_episode_return")}
    assert {"critic_loss", "alpha", "entropy"} <= metrics.keys()
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    assert summary["total_steps"] == 120
