"""CrossQ: the shared BatchRenorm, the joint train-mode pass, the policy delay, acting and exact resumption."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from baselines.common import tanh_gaussian_sample, tanh_log_det_jacobian
from baselines.crossq import CrossQ, CrossQConfig
from dime.batch_renorm import BatchRenorm
from dime.replay import ReplayBuffer
from dime.tasks import get_task

OBS_DIM, ACT_DIM = 3, 2
TASK = get_task("gym/Pendulum-v1")


def small_config(**overrides: object) -> CrossQConfig:
    base = {"critic_hidden": (32, 32), "actor_hidden": (16, 16), "batch_size": 16, "learning_starts": 0}
    return CrossQConfig(**{**base, **overrides})


def make_agent(seed: int = 0, **overrides: object) -> CrossQ:
    torch.manual_seed(seed)
    return CrossQ(TASK, OBS_DIM, ACT_DIM, small_config(**overrides), torch.device("cpu"))


def constant_buffer(obs_value: float, next_obs_value: float, n: int = 64) -> ReplayBuffer:
    buffer = ReplayBuffer(OBS_DIM, ACT_DIM, n, "cpu", seed=0)
    for i in range(n):
        action = torch.linspace(-0.9, 0.9, ACT_DIM) * (1 if i % 2 else -1)
        buffer.add([obs_value] * OBS_DIM, action.numpy(), -1.0, [next_obs_value] * OBS_DIM, False)
    return buffer


def random_buffer(n: int = 200, seed: int = 0) -> ReplayBuffer:
    g = torch.Generator().manual_seed(seed)
    buffer = ReplayBuffer(OBS_DIM, ACT_DIM, n, "cpu", seed=seed)
    for _ in range(n):
        obs, next_obs = torch.randn(OBS_DIM, generator=g), torch.randn(OBS_DIM, generator=g)
        action = torch.rand(ACT_DIM, generator=g) * 2 - 1
        reward = float(torch.randn((), generator=g))
        buffer.add(obs.numpy(), action.numpy(), reward, next_obs.numpy(), bool(torch.rand((), generator=g) < 0.1))
    return buffer


def batch_renorms(module: nn.Module) -> list[BatchRenorm]:
    return [m for m in module.modules() if isinstance(m, BatchRenorm)]


def test_every_normalisation_is_the_shared_batch_renorm() -> None:
    agent = make_agent()
    critic_norms, actor_norms = batch_renorms(agent.critic), batch_renorms(agent.actor)
    # BRN on the input and after every hidden ReLU, in both networks ('brn_actor').
    assert len(critic_norms) == 1 + 2 and len(actor_norms) == 1 + 2
    assert all(type(m) is BatchRenorm for m in critic_norms + actor_norms)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in agent.critic.modules())
    # Each stacked critic keeps its own statistics; Flax momentum and the 100k warm-up of the paper preset.
    assert critic_norms[0].running_mean.shape == (2, 1, OBS_DIM + ACT_DIM)
    assert critic_norms[1].running_mean.shape == (2, 1, 32)
    assert all(m.momentum == 0.99 and m.warmup_steps == 100_000 and m.eps == 1e-3 for m in critic_norms)
    assert all(m.momentum == 0.99 and m.warmup_steps == 100_000 for m in actor_norms)


def test_joint_pass_updates_critic_statistics_once_per_critic_update() -> None:
    agent = make_agent()
    buffer = constant_buffer(obs_value=1.0, next_obs_value=3.0)
    agent.update(buffer, env_step=1)
    critic_input, actor_input = batch_renorms(agent.critic)[0], batch_renorms(agent.actor)[0]
    assert all(int(m.steps) == 1 for m in batch_renorms(agent.critic))
    # One pass over [s; s'] (s = 1, s' = 3): the running mean moves by 0.01 · mean = 0.01 · 2 in every member.
    # Separate passes would give 0.01 · 1 (only s in train mode) or two statistics updates.
    torch.testing.assert_close(critic_input.running_mean[:, 0, :OBS_DIM], torch.full((2, OBS_DIM), 0.02))
    # Next-state actions come from the actor in eval mode: its statistics are untouched before the first actor step.
    assert all(int(m.steps) == 0 for m in batch_renorms(agent.actor))
    torch.testing.assert_close(actor_input.running_mean, torch.zeros(OBS_DIM))

    agent.update(buffer, env_step=2)
    agent.update(buffer, env_step=3)
    assert all(int(m.steps) == 3 for m in batch_renorms(agent.critic))
    # The third critic update is followed by the first (policy_delay = 3) actor update, in train mode on s only.
    assert all(int(m.steps) == 1 for m in batch_renorms(agent.actor))
    torch.testing.assert_close(actor_input.running_mean, torch.full((OBS_DIM,), 0.01))


def test_policy_delay_three_counts_critic_updates() -> None:
    agent = make_agent(utd=2)
    buffer = random_buffer()
    actor_steps = []
    for env_step in range(1, 7):
        agent.update(buffer, env_step)
        actor_steps.append(int(batch_renorms(agent.actor)[0].steps))
    assert agent.gradient_steps == 12
    # Critic updates 3, 6, 9, 12 are followed by an actor update: after env steps 2, 3, 5, 6.
    assert actor_steps == [0, 1, 2, 2, 3, 4]


def test_actor_step_moves_actor_and_alpha_but_not_critic() -> None:
    agent = make_agent(policy_delay=1)
    buffer = random_buffer()
    agent.update(buffer, env_step=1)  # critic step then actor step
    critic_before = {k: v.clone() for k, v in agent.critic.state_dict().items()}
    actor_before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    alpha_before = agent.log_alpha.detach().clone()
    agent.critic.zero_grad(set_to_none=True)
    agent._actor_step(buffer.sample(16).obs)
    assert all(torch.equal(v, agent.critic.state_dict()[k]) for k, v in critic_before.items())
    assert any(not torch.equal(v, agent.actor.state_dict()[k]) for k, v in actor_before.items())
    assert not torch.equal(alpha_before, agent.log_alpha.detach())
    assert all(p.grad is None for p in agent.critic.parameters()), "actor loss leaked gradients into the critic"


def test_act_is_eval_mode_and_deterministic_is_tanh_of_mean() -> None:
    agent = make_agent()
    agent.update(random_buffer(), env_step=1)
    obs = torch.randn(5, OBS_DIM)
    steps_before = [int(m.steps) for m in batch_renorms(agent.actor)]
    with torch.no_grad():
        deterministic = agent.act(obs, deterministic=True)
        stochastic = agent.act(obs, deterministic=False)
        mean, _ = agent.actor(obs, training=False)
    torch.testing.assert_close(deterministic, torch.tanh(mean))
    assert stochastic.shape == (5, ACT_DIM) and stochastic.abs().max() <= 1.0
    assert not torch.equal(stochastic, deterministic)
    assert [int(m.steps) for m in batch_renorms(agent.actor)] == steps_before


def test_metrics_are_zero_dim_tensors_with_stable_keys() -> None:
    agent = make_agent()
    buffer = random_buffer()
    first = agent.update(buffer, env_step=1)
    agent.update(buffer, env_step=2)
    third = agent.update(buffer, env_step=3)
    assert first.keys() == third.keys()
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in third.values())
    assert float(first["actor_loss"]) == 0.0 and float(third["actor_loss"]) != 0.0


def test_resume_from_state_dict_is_bit_exact() -> None:
    buffer = random_buffer()
    reference = make_agent(seed=1)
    for step in range(1, 5):
        reference.update(buffer, step)
    saved = copy.deepcopy(reference.state_dict())  # state_dict() shares storage with the live tensors
    rng = torch.get_rng_state()
    for step in range(5, 9):
        reference.update(buffer, step)

    resumed = make_agent(seed=2)
    resumed.load_state_dict(saved)
    torch.set_rng_state(rng)
    buffer_again = random_buffer()
    for _ in range(4):
        buffer_again.sample(16)  # replay the first four draws of the reference run's buffer
    for step in range(5, 9):
        resumed.update(buffer_again, step)
    for (name, a), b in zip(reference.critic.state_dict().items(), resumed.critic.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(reference.actor.state_dict().values(), resumed.actor.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(reference.log_alpha, resumed.log_alpha)


def test_paper_preset_and_swimmer_discount() -> None:
    c = CrossQ.default_config(TASK)
    assert (c.critic_hidden, c.actor_hidden, c.utd, c.policy_delay) == ((2048, 2048), (256, 256), 1, 3)
    assert (c.lr, c.adam_b1, c.batch_size, c.learning_starts, c.gamma) == (1e-3, 0.5, 256, 5000, 0.99)
    assert (c.log_std_min, c.log_std_max, c.init_alpha, c.eval_deterministic) == (-20.0, 2.0, 1.0, True)
    assert CrossQ.default_config(get_task("gym/Swimmer-v4")).gamma == 0.9999
    agent = CrossQ(TASK, OBS_DIM, ACT_DIM, small_config(), torch.device("cpu"))
    assert agent.target_entropy == -ACT_DIM and math.isclose(float(agent.log_alpha.detach().exp()), 1.0)
    betas = [g["betas"][0] for o in (agent.actor_optimizer, agent.critic_optimizer) for g in o.param_groups]
    assert betas == [0.5, 0.5]


@pytest.mark.parametrize("mean_value", [0.0, 4.0])
def test_tanh_gaussian_log_prob_matches_torch_distributions(mean_value: float) -> None:
    torch.manual_seed(0)
    mean = torch.full((4000, 2), mean_value)
    log_std = torch.tensor([[-1.0, 0.5]]).expand(4000, 2)
    actions, log_prob = tanh_gaussian_sample(mean, log_std)
    base = torch.distributions.Normal(mean, log_std.exp())
    # Re-derive the pre-tanh sample with float64 atanh to compare against the textbook change of variables.
    pre = torch.atanh(actions.double().clamp(-1 + 1e-12, 1 - 1e-12))
    expected = (base.log_prob(pre.float()).double() - torch.log1p(-torch.tanh(pre).square())).sum(-1)
    finite = actions.abs().max(-1).values < 0.999  # where float32 tanh has not lost the pre-image
    torch.testing.assert_close(log_prob.double()[finite], expected[finite], rtol=1e-3, atol=1e-3)
    assert torch.isfinite(log_prob).all()
    torch.testing.assert_close(
        tanh_log_det_jacobian(torch.tensor([[0.3, -20.0]])),
        torch.tensor([math.log(1 - math.tanh(0.3) ** 2) + 2 * (math.log(2) - 20.0)]),
    )
