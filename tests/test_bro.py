"""BRO / BRO (Fast): quantile-Huber loss, BroNet, resets, the optimistic actor's duals, presets, resumption."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from baselines.bro import (
    BRO,
    BRO_RESET_STEPS,
    BROConfig,
    BROFast,
    BroNet,
    gaussian_kl,
    quantile_huber_loss,
    quantile_midpoints,
)
from dime.agents import load_algorithm
from dime.nn import EnsembleLinear
from dime.replay import ReplayBuffer
from dime.tasks import get_task

OBS_DIM, ACT_DIM = 3, 2
TASK = get_task("gym/Pendulum-v1")


def small_config(**overrides: object) -> BROConfig:
    base = {
        "critic_width": 16,
        "actor_width": 16,
        "n_quantiles": 5,
        "batch_size": 8,
        "utd": 2,
        "learning_starts": 0,
    }
    return BROConfig(**{**base, **overrides})


def make_agent(seed: int = 0, cls: type[BRO] = BRO, **overrides: object) -> BRO:
    torch.manual_seed(seed)
    return cls(TASK, OBS_DIM, ACT_DIM, small_config(**overrides), torch.device("cpu"))


def random_buffer(n: int = 100, seed: int = 0) -> ReplayBuffer:
    g = torch.Generator().manual_seed(seed)
    buffer = ReplayBuffer(OBS_DIM, ACT_DIM, n, "cpu", seed=seed)
    for _ in range(n):
        obs, next_obs = torch.randn(OBS_DIM, generator=g), torch.randn(OBS_DIM, generator=g)
        action = torch.rand(ACT_DIM, generator=g) * 2 - 1
        buffer.add(obs.numpy(), action.numpy(), float(torch.randn((), generator=g)), next_obs.numpy(), False)
    return buffer


# ----------------------------------------------------------------------------------------- quantile-Huber loss
def test_quantile_huber_loss_matches_hand_computation() -> None:
    taus = torch.tensor([0.25, 0.75])
    pred = torch.tensor([[[0.0, 1.0]]])  # (E=1, B=1, N=2)
    target = torch.tensor([[0.5, 3.0]])  # (B=1, M=2)
    # κ = 1. δ_ij = y_j − θ_i:  θ₀ = 0 (τ .25): δ = .5 → .25·.125, δ = 3 → .25·2.5;
    #                           θ₁ = 1 (τ .75): δ = −.5 → |.75 − 1|·.125, δ = 2 → .75·1.5.
    # Σ_i per target: .0625 and 1.75; mean over targets: .90625.
    assert float(quantile_huber_loss(pred, target, taus, kappa=1.0)) == pytest.approx(0.90625)
    # κ = 2: δ = 3 is linear (2·(3 − 1) = 4), δ = 2 quadratic (2); divided by κ: (.03125 + 1.25)/2 = .640625.
    assert float(quantile_huber_loss(pred, target, taus, kappa=2.0)) == pytest.approx(0.640625)
    # Two identical critics and a batch of two identical rows: summed over critics, averaged over the batch.
    pred2 = pred.expand(2, 2, 2)
    assert float(quantile_huber_loss(pred2, target.expand(2, 2), taus, kappa=1.0)) == pytest.approx(2 * 0.90625)


def test_quantile_huber_gradient_is_the_asymmetric_quantile_pull() -> None:
    taus = quantile_midpoints(4)
    torch.testing.assert_close(taus, torch.tensor([0.125, 0.375, 0.625, 0.875]))
    # One far target (|δ| > κ): the gradient on θ_i is −τ_i below the target and (1 − τ_i) above it.
    pred = torch.tensor([[[-5.0, -5.0, 5.0, 5.0]]], requires_grad=True)
    quantile_huber_loss(pred, torch.zeros(1, 1), taus, kappa=1.0).backward()
    torch.testing.assert_close(pred.grad, torch.tensor([[[-0.125, -0.375, 1 - 0.625, 1 - 0.875]]]))


def test_minimising_the_loss_recovers_quantiles() -> None:
    torch.manual_seed(0)
    samples = torch.randn(1, 2000)
    taus = quantile_midpoints(5)
    # With a small κ the quantile-Huber loss is the pinball loss, minimised by the τ-quantiles of the targets.
    theta = torch.zeros(1, 1, 5, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=0.01)
    for _ in range(400):
        optimizer.zero_grad()
        quantile_huber_loss(theta, samples, taus, kappa=1e-3).backward()
        optimizer.step()
    expected = torch.quantile(samples.flatten(), taus)
    torch.testing.assert_close(theta.detach().flatten(), expected, atol=0.05, rtol=0.0)


# ------------------------------------------------------------------------------------------------ BroNet
def test_bronet_shapes_init_and_independent_members() -> None:
    torch.manual_seed(0)
    net = BroNet(7, 16, depth=2, out_features=5, ensemble_size=3)
    assert net(torch.randn(11, 7)).shape == (3, 11, 5)  # shared input broadcast to every member
    x = torch.randn(3, 11, 7)
    out = net(x)
    assert out.shape == (3, 11, 5)
    assert BroNet(7, 16, depth=1)(torch.randn(11, 7)).shape == (11, 16)  # an actor trunk: no head
    # Orthogonal init with gain √2 (square hidden layers: Wᵀ W = 2 I) and zero biases.
    hidden = net.blocks[0][0]
    assert isinstance(hidden, EnsembleLinear)
    for member in hidden.weight:
        torch.testing.assert_close(member.T @ member, 2.0 * torch.eye(16), atol=1e-5, rtol=0)
    assert torch.count_nonzero(hidden.bias) == 0
    # Members share no parameters: perturbing member 1 leaves members 0 and 2 unchanged.
    with torch.no_grad():
        net.head.weight[1] += 1.0
    changed = net(x)
    torch.testing.assert_close(changed[[0, 2]], out[[0, 2]])
    assert not torch.allclose(changed[1], out[1])


def test_bronet_residual_structure() -> None:
    torch.manual_seed(0)
    net = BroNet(4, 8, depth=2, out_features=3)
    assert len(net.blocks) == 2
    kinds = [[type(m) for m in block] for block in net.blocks]
    assert kinds == [[nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear, nn.LayerNorm]] * 2
    assert [type(m) for m in net.stem] == [nn.Linear, nn.LayerNorm, nn.ReLU]
    assert all(m.eps == 1e-6 for m in net.modules() if isinstance(m, nn.LayerNorm))  # flax's LayerNorm ε
    x = torch.randn(6, 4)
    # The stem and the two residual branches, evaluated by hand.
    h = torch.relu(net.stem[1](net.stem[0](x)))
    for block in net.blocks:
        h = h + block[4](block[3](torch.relu(block[1](block[0](h)))))
    torch.testing.assert_close(net(x), net.head(h))
    # A branch whose last LayerNorm outputs zero reduces its block to the identity (the skip connection).
    with torch.no_grad():
        for block in net.blocks:
            block[4].weight.zero_()
            block[4].bias.zero_()
    torch.testing.assert_close(net(x), net.head(torch.relu(net.stem[1](net.stem[0](x)))))


def test_actor_heads_and_bounds() -> None:
    agent = make_agent()
    actor, actor_o = agent.nets.actor, agent.nets.actor_o
    # The shift head is bias-free with orthogonal init of gain 0.01 (rows of norm 0.01 since A < width).
    assert actor_o.shift.bias is None
    torch.testing.assert_close(actor_o.shift.weight.norm(dim=1), torch.full((ACT_DIM,), 0.01))
    with torch.no_grad():
        actor.log_std.bias.fill_(100.0)
        assert float(actor(torch.randn(4, OBS_DIM))[1].max()) == pytest.approx(2.0)
        actor.log_std.bias.fill_(-100.0)
        assert float(actor(torch.randn(4, OBS_DIM))[1].min()) == pytest.approx(-10.0)
        obs = torch.randn(4, OBS_DIM)
        mean, log_std = actor(obs)
        mean_o, log_std_o = actor_o(obs, mean, log_std)
    torch.testing.assert_close(log_std_o.exp(), 0.75 * log_std.exp())
    assert (mean_o - mean).abs().max() < 0.1  # a small initial shift around the main actor's mean


def test_gaussian_kl_matches_torch() -> None:
    torch.manual_seed(0)
    mp, lp, mq, lq = (torch.randn(5, 3) for _ in range(4))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mp, lp.exp()), torch.distributions.Normal(mq, lq.exp())
    ).sum(-1)
    torch.testing.assert_close(gaussian_kl(mp, lp, mq, lq), expected)


# ------------------------------------------------------------------------------------------------- resets
def optimizer_steps(agent: BRO) -> list[int]:
    return [int(next(iter(o.state.values()))["step"]) for o in agent.optimizers]


def test_reset_schedule_resets_everything_at_the_scheduled_steps_and_keeps_the_buffer() -> None:
    agent = make_agent(reset_steps=(3, 5))
    initial = copy.deepcopy(agent.nets.state_dict())
    buffer = random_buffer()
    stored = {
        k: v.clone()
        for k, v in buffer.state_dict().items()
        if k in ("obs", "next_obs", "actions", "rewards", "terminated")
    }
    for step in (1, 2, 3):
        agent.update(buffer, step)
    assert optimizer_steps(agent) == [6] * 4  # UTD 2 × 3 env steps, every optimiser
    trained = agent.nets.state_dict()
    assert not torch.equal(trained["critic.stem.0.weight"], initial["critic.stem.0.weight"])
    assert float(agent.nets.duals.alpha().detach()) != 1.0

    # The reset belongs to the update of the first env step after a scheduled count (the reference's 15001).
    assert not agent.reset_if_scheduled(3)
    assert agent.reset_if_scheduled(4)
    assert agent.resets_done == 1
    for name, value in agent.nets.state_dict().items():
        assert torch.equal(value, initial[name]), f"{name} not back at its initial value"
    assert float(agent.nets.duals.alpha().detach()) == pytest.approx(1.0)
    assert float(agent.nets.duals.optimism().detach()) == pytest.approx(1.0)
    assert float(agent.nets.duals.kl_weight().detach()) == pytest.approx(0.25)
    for optimizer in agent.optimizers:
        for state in optimizer.state.values():
            assert all(torch.count_nonzero(v) == 0 for v in state.values()), "optimiser state not cleared"
    assert not agent.reset_if_scheduled(4)  # once only

    counts = []
    for step in (4, 5, 6, 7):
        agent.update(buffer, step)
        counts.append(optimizer_steps(agent)[0])
    # No reset inside update(4) (already applied) nor update(5); update(6) resets before its gradient steps.
    assert counts == [2, 4, 2, 4]
    assert agent.resets_done == 2
    assert all(torch.equal(stored[k], v) for k, v in buffer.state_dict().items() if k in stored), "buffer changed"
    assert len(buffer) == 100


def test_reset_without_schedule_never_fires_and_skipped_steps_still_reset_once() -> None:
    agent = make_agent(reset_steps=())
    assert not any(agent.reset_if_scheduled(s) for s in range(1, 100))
    agent = make_agent(reset_steps=(10, 20, 30))
    assert agent.reset_if_scheduled(25)  # learning started after two scheduled points: one reset
    assert agent.resets_done == 2 and not agent.reset_if_scheduled(30) and agent.reset_if_scheduled(31)


# -------------------------------------------------------------------------------------------------- duals
def prime_actor(agent: BRO, log_std_logit: float, shift: float) -> None:
    """Make the main actor state-independent with a chosen σ, and the optimistic shift a chosen size."""
    actor = agent.nets.actor
    with torch.no_grad():
        actor.mean.weight.zero_()
        actor.log_std.weight.zero_()
        actor.log_std.bias.fill_(log_std_logit)
        agent.nets.actor_o.shift.weight.fill_(shift)


@pytest.mark.parametrize(
    ("shift", "kl_above_target"),
    [(1.0, True), (0.0, False)],
)
def test_dual_updates_move_the_right_way(shift: float, kl_above_target: bool) -> None:
    agent = make_agent(utd=1)
    prime_actor(agent, log_std_logit=math.atanh(2 / 3), shift=shift)  # σ = 1
    optimism, kl_weight = float(agent.nets.duals.optimism().detach()), float(agent.nets.duals.kl_weight().detach())
    metrics = agent.update(random_buffer(), env_step=1)
    assert (float(metrics["kl_per_dim"]) > 0.05) is kl_above_target
    new_optimism, new_kl_weight = (
        float(agent.nets.duals.optimism().detach()),
        float(agent.nets.duals.kl_weight().detach()),
    )
    if kl_above_target:  # too far from the main policy: weigh the KL more, be less optimistic
        assert new_kl_weight > kl_weight and new_optimism < optimism
    else:
        assert new_kl_weight < kl_weight and new_optimism > optimism


@pytest.mark.parametrize(("log_std_logit", "entropy_above_target"), [(math.atanh(2 / 3), True), (-10.0, False)])
def test_temperature_moves_against_the_entropy_gap(log_std_logit: float, entropy_above_target: bool) -> None:
    agent = make_agent(utd=1)
    prime_actor(agent, log_std_logit=log_std_logit, shift=0.0)  # σ = 1 (high entropy) or e^-10 (low)
    metrics = agent.update(random_buffer(), env_step=1)
    assert (float(metrics["entropy"]) > -ACT_DIM / 2) is entropy_above_target
    alpha = float(agent.nets.duals.alpha().detach())
    assert (alpha < 1.0) is entropy_above_target


# ---------------------------------------------------------------------------------------- presets, misc
def test_presets_share_one_class() -> None:
    bro, fast = BRO.default_config(TASK), BROFast.default_config(TASK)
    assert load_algorithm("bro") is BRO and load_algorithm("bro-fast") is BROFast and issubclass(BROFast, BRO)
    assert BROFast.update is BRO.update and BROFast.__init__ is BRO.__init__
    assert (bro.utd, fast.utd) == (10, 2)
    assert (
        bro.reset_steps
        == BRO_RESET_STEPS
        == (15_000, 50_000, 250_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000)
    )
    assert fast.reset_steps == (15_000,)
    assert (bro.batch_size, bro.learning_starts, bro.critic_width, bro.critic_depth) == (128, 2500, 512, 2)
    assert (bro.actor_width, bro.actor_depth, bro.n_quantiles, bro.pessimism, bro.tau) == (256, 1, 100, 0.0, 0.005)
    assert (bro.kl_target, bro.std_multiplier, bro.init_optimism, bro.init_kl_weight) == (0.05, 0.75, 1.0, 0.25)
    assert {k: v for k, v in vars(fast).items() if k not in ("utd", "reset_steps")} == {
        k: v for k, v in vars(bro).items() if k not in ("utd", "reset_steps")
    }
    agent = make_agent()
    assert agent.target_entropy == -ACT_DIM / 2
    assert type(agent.critic_optimizer) is torch.optim.AdamW
    assert agent.critic_optimizer.param_groups[0]["weight_decay"] == 1e-4
    assert [g["lr"] for g in agent.dual_optimizer.param_groups] == [3e-4, 3e-5]
    assert all(g["betas"][0] == 0.5 for g in agent.dual_optimizer.param_groups)


def test_target_critic_tracks_by_polyak_and_act_uses_the_right_actor() -> None:
    agent = make_agent(utd=1)
    critic, target = agent.nets.critic, agent.nets.target_critic
    assert all(torch.equal(a, b) for a, b in zip(critic.parameters(), target.parameters(), strict=True))
    before = [p.clone() for p in target.parameters()]
    agent.update(random_buffer(), env_step=1)
    for old, new, online in zip(before, target.parameters(), critic.parameters(), strict=True):
        torch.testing.assert_close(new, old + 0.005 * (online - old))
    obs = torch.randn(6, OBS_DIM)
    with torch.no_grad():
        mean, log_std = agent.nets.actor(obs)
        torch.testing.assert_close(agent.act(obs, deterministic=True), torch.tanh(mean))
        with torch.random.fork_rng():
            explore = agent.act(obs, deterministic=False)
        mean_o, log_std_o = agent.nets.actor_o(obs, mean, log_std)
        expected = torch.tanh(mean_o + log_std_o.exp() * torch.randn_like(mean_o))
    torch.testing.assert_close(explore, expected)  # same noise: the optimistic policy explores


def test_resume_from_state_dict_is_bit_exact_across_a_reset() -> None:
    buffer = random_buffer()
    reference = make_agent(seed=1, reset_steps=(4,))
    for step in (1, 2, 3):
        reference.update(buffer, step)
    saved = copy.deepcopy(reference.state_dict())
    rng = torch.get_rng_state()
    for step in (4, 5, 6):
        reference.update(buffer, step)

    resumed = make_agent(seed=2, reset_steps=(4,))
    resumed.load_state_dict(saved)
    torch.set_rng_state(rng)
    replay = random_buffer()
    for _ in range(3):
        replay.sample(16)
    for step in (4, 5, 6):
        resumed.update(replay, step)
    for (name, a), b in zip(reference.nets.state_dict().items(), resumed.nets.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.resets_done == 1 and resumed.gradient_steps == reference.gradient_steps == 12
