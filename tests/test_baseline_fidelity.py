"""Behaviours the baselines take from their official code that no other test pins down: SAC's temperature loss in
CleanRL's form, a fixed temperature α = 0 (the "no entropy" ablation) in every baseline with a temperature, and the
range checks of every baseline's config."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from baselines.sac import SAC
from dime.agents import ConfigError, load_algorithm
from dime.replay import ReplayBuffer
from dime.tasks import get_task

OBS_DIM, ACT_DIM = 3, 2
TASK = get_task("gym/Pendulum-v1")
CPU = torch.device("cpu")
TINY = {
    "sac": {"hidden": (16, 16)},
    "crossq": {"critic_hidden": (16, 16), "actor_hidden": (16, 16), "policy_delay": 1},
    "bro": {"critic_width": 16, "actor_width": 16, "n_quantiles": 5, "utd": 1},
    "dacer": {"hidden": (16, 16), "diffusion_hidden": (16, 16), "diffusion_steps": 2, "train_every": 1},
}


def make_agent(algo: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cls = load_algorithm(algo)
    config = cls.default_config(TASK).replace(batch_size=16, learning_starts=0, **{**TINY[algo], **overrides})
    return cls(TASK, OBS_DIM, ACT_DIM, config, CPU)


def random_buffer(rows: int = 64) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(OBS_DIM, ACT_DIM, rows, CPU, seed=0)
    for _ in range(rows):
        obs, next_obs = rng.normal(size=OBS_DIM), rng.normal(size=OBS_DIM)
        buffer.add(obs, rng.uniform(-1, 1, ACT_DIM), float(rng.normal()), next_obs, bool(rng.random() < 0.1))
    return buffer


def test_sac_temperature_loss_is_cleanrls_with_a_fresh_sample_of_the_updated_actor():
    """CleanRL: L_α = −exp(log α)·mean(log π(ã|s) + H̄), ã drawn after the actor step; ∂L/∂log α = that loss."""
    agent: SAC = make_agent("sac", init_alpha=0.3)
    obs = torch.randn(16, OBS_DIM)
    alpha = agent.log_alpha.exp().item()
    torch.manual_seed(5)
    agent._update_actor(obs)
    torch.manual_seed(5)
    torch.randn(16, ACT_DIM)  # the actor step's own draw
    with torch.no_grad():
        _, fresh_log_prob = agent.actor.sample(obs)  # the next draw, from the updated actor
    expected = -alpha * (fresh_log_prob + agent.target_entropy).mean()
    torch.testing.assert_close(agent.log_alpha.grad, expected)


def test_sac_fixed_alpha_zero_trains_without_any_entropy_term():
    agent: SAC = make_agent("sac", alpha=0.0)
    assert agent.alpha_optimizer is None and agent.log_alpha.exp().item() == 0.0
    buffer = random_buffer()
    batch = buffer.sample(16)
    reference = copy.deepcopy(agent)
    torch.manual_seed(3)
    metrics = agent._critic_step(batch)
    torch.manual_seed(3)
    with torch.no_grad():
        next_actions, _ = reference.actor.sample(batch.next_obs)
        next_q = reference.critic_target(batch.next_obs, next_actions).min(0).values
        target = batch.rewards + agent.config.gamma * (1 - batch.terminated) * next_q
        expected = (reference.critic(batch.obs, batch.actions) - target).pow(2).mean(-1).sum()
    torch.testing.assert_close(metrics["critic_loss"], expected)
    assert metrics["alpha"].item() == 0.0
    obs = batch.obs
    torch.manual_seed(4)
    actor_loss = agent._update_actor(obs)["actor_loss"]
    torch.manual_seed(4)
    with torch.no_grad():
        actions, _ = reference.actor.sample(obs)
        expected_actor = -agent.critic(obs, actions).min(0).values.mean()  # the critic is unchanged by this step
    torch.testing.assert_close(actor_loss, expected_actor)


@pytest.mark.parametrize("algo", list(TINY))
def test_fixed_alpha_zero_stays_exactly_zero_through_training(algo):
    """``--set alpha=0`` is a fixed temperature of 0 in every baseline with one (SAC used to fall back to 1)."""
    agent = make_agent(algo, alpha=0.0)
    buffer = random_buffer()
    for env_step in range(1, 7):
        metrics = agent.update(buffer, env_step)
        assert all(torch.isfinite(v).all() for v in metrics.values()), metrics
        if "alpha" in metrics:
            assert metrics["alpha"].item() == 0.0
    alpha = agent.nets.duals.alpha() if algo == "bro" else agent.log_alpha.exp()
    assert alpha.item() == 0.0
    if algo == "dacer":  # α scales DACER's action noise: none at all
        obs = torch.randn(4, OBS_DIM)
        torch.manual_seed(1)
        noisy = agent.act(obs, deterministic=False)
        torch.manual_seed(1)
        torch.testing.assert_close(noisy, agent.act(obs, deterministic=True), rtol=0, atol=0)


#: One bad value per rule: each must be refused by ``replace`` (what ``--set`` runs) in one line naming the field.
BAD_VALUES = [
    ("sac", "alpha", -0.1),
    ("sac", "hidden", []),
    ("sac", "tau", 1.5),
    ("sac", "actor_lr", 0.0),
    ("sac", "policy_frequency", 0),
    ("crossq", "alpha", -1.0),
    ("crossq", "critic_hidden", [0, 8]),
    ("crossq", "adam_b1", 1.5),
    ("bro", "alpha", -1.0),
    ("bro", "init_optimism", 1e6),
    ("bro", "reset_steps", [50, 10]),
    ("bro", "n_quantiles", 0),
    ("dacer", "alpha", -1.0),
    ("dacer", "diffusion_steps", 0),
    ("dacer", "beta_schedule", "quadratic"),
    ("dacer", "train_every", 0),
    ("qsm", "diffusion_steps", 0),
    ("qsm", "time_dim", 7),
    ("qsm", "m_q", -1.0),
    ("diffusion-ql", "train_every", 0),
    ("diffusion-ql", "epsilon_start", 1.5),
    ("diffusion-ql", "actor_hidden", []),
    ("consistency-ac", "sigma_low", 100.0),
    ("consistency-ac", "num_steps", 0),
    ("dipo", "action_lr", 0.0),
    ("dipo", "tau", -0.1),
    ("dipo", "actor_target_every", 0),
    ("qvpo", "entropy_alpha_min", 0.05),
    ("qvpo", "train_samples", 0),
]


@pytest.mark.parametrize(("algo", "key", "value"), BAD_VALUES)
def test_config_refuses_out_of_range_values_in_one_line(algo, key, value):
    config = load_algorithm(algo).default_config(TASK)
    with pytest.raises(ConfigError) as info:
        config.replace(**{key: value})
    message = str(info.value)
    assert key in message and "valid" in message and "\n" not in message
