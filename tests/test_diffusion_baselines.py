"""Unit tests of the diffusion-policy baselines: each method's defining piece against an independent computation.

The independent computations re-derive schedules and samplers from the papers' formulas in plain torch/numpy
and replay the agent's random draws by re-seeding the global RNG (the agents draw all randomness from it).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from baselines.consistency_ac import ConsistencyAC
from baselines.dacer import DACER, gmm_entropy
from baselines.diffusion_ql import DiffusionQL
from baselines.diffusion_utils import (
    DiffusionSchedule,
    SinusoidalEmbedding,
    TwinCritic,
    cosine_beta_schedule,
    softmax_q_select,
    vp_beta_schedule,
)
from baselines.dipo import DIPO
from baselines.qsm import QSM
from baselines.qvpo import QVPO, entropy_weight
from dime.agents import ALGORITHMS, load_algorithm
from dime.nn import EnsembleLinear
from dime.replay import ReplayBuffer
from dime.tasks import TaskSpec, get_task

OBS_DIM, ACT_DIM = 3, 2
CPU = torch.device("cpu")
#: Tiny networks; the methods that train every n-th env step train on every call here (their cadence has its own test).
TINY = {
    QSM: {"actor_hidden": (16, 16), "critic_hidden": (16, 16), "time_dim": 8, "time_hidden": 8},
    DiffusionQL: {"actor_hidden": (16, 16), "critic_hidden": (16, 16), "num_candidates": 8, "train_every": 1},
    ConsistencyAC: {"actor_hidden": (16, 16), "critic_hidden": (16, 16), "num_candidates": 8, "train_every": 1},
    DIPO: {"actor_hidden": (16, 16), "critic_hidden": (16, 16), "time_hidden": 16, "diffusion_steps": 6},
    QVPO: {
        "actor_hidden": (16, 16),
        "critic_hidden": (16, 16),
        "time_hidden": 16,
        "diffusion_steps": 4,
        "train_samples": 6,
        "eval_samples": 5,
    },
    DACER: {
        "hidden": (16, 16),
        "diffusion_hidden": (16, 16),
        "diffusion_steps": 4,
        "entropy_samples": 20,
        "gmm_iterations": 10,
        "alpha_every": 3,
        "train_every": 1,
    },
}


@pytest.fixture
def task() -> TaskSpec:
    return get_task("gym/Pendulum-v1")


def make_agent(cls, task: TaskSpec, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = cls.default_config(task).replace(batch_size=16, **{**TINY[cls], **overrides})
    return cls(task, OBS_DIM, ACT_DIM, config, CPU)


def filled_buffer(rows: int = 64, capacity: int = 256, seed: int = 0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(OBS_DIM, ACT_DIM, capacity, CPU, seed=seed)
    for _ in range(rows):
        buffer.add(
            rng.normal(size=OBS_DIM),
            rng.uniform(-1, 1, ACT_DIM),
            float(rng.normal()),
            rng.normal(size=OBS_DIM),
            bool(rng.random() < 0.1),
        )
    return buffer


def vp_alphas_cumprod(steps: int) -> torch.Tensor:
    """ᾱ_t for the VP schedule, written from the formula independently of the module."""
    t = np.arange(1, steps + 1)
    alpha = np.exp(-0.1 / steps - 0.5 * (10.0 - 0.1) * (2 * t - 1) / steps**2)
    return torch.tensor(np.cumprod(alpha), dtype=torch.float32)


# --------------------------------------------------------------------------------------------- shared module


def test_beta_schedules_match_their_closed_forms():
    np.testing.assert_allclose(torch.cumprod(1 - vp_beta_schedule(7), 0), vp_alphas_cumprod(7), rtol=1e-6)
    f = np.cos((np.arange(11) / 10 + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(cosine_beta_schedule(10), np.clip(1 - f[1:] / f[:-1], 0, 0.999), rtol=1e-5)


def test_ddpm_reverse_sampler_matches_hand_written_chain():
    """x̂_0-clipped posterior-mean chain with posterior std and a noise ratio, against Ho et al. eqs. 6–7."""
    steps, ratio = 4, 0.5
    betas = vp_beta_schedule(steps)
    schedule = DiffusionSchedule(betas)
    weight = torch.randn(ACT_DIM + 1 + OBS_DIM, ACT_DIM)

    def eps_fn(x, t, obs):
        return torch.cat([x, t.expand(x.shape[0]).unsqueeze(-1) / steps, obs], -1) @ weight

    obs = torch.randn(5, OBS_DIM)
    torch.manual_seed(3)
    got = schedule.sample(eps_fn, obs, ACT_DIM, clip_x0=True, noise_ratio=ratio)

    abar = torch.cumprod(1 - betas, 0)
    torch.manual_seed(3)
    x = torch.randn(5, ACT_DIM)
    for i in reversed(range(steps)):
        prev = abar[i - 1] if i > 0 else torch.tensor(1.0)
        x0 = ((x - (1 - abar[i]).sqrt() * eps_fn(x, torch.full((5,), float(i)), obs)) / abar[i].sqrt()).clamp(-1, 1)
        mean = (prev.sqrt() * betas[i] * x0 + (1 - betas[i]).sqrt() * (1 - prev) * x) / (1 - abar[i])
        std = (betas[i] * (1 - prev) / (1 - abar[i])).sqrt()
        x = mean + ratio * std * torch.randn(5, ACT_DIM) if i > 0 else mean
    torch.testing.assert_close(got, x.clamp(-1, 1), rtol=1e-5, atol=1e-6)


def test_softmax_q_selection_draws_in_proportion_to_softmax_q():
    """Candidate k is picked with probability softmax(min_j Q_j)_k (here Q = log of 1:3)."""

    class FixedQ(nn.Module):
        def q_min(self, obs, actions):
            return torch.log(1.0 + 2.0 * (actions[:, 0] > 0).float())

    n = 20_000
    picks = softmax_q_select(
        lambda o: torch.tensor([[-0.5, 0.0], [0.5, 0.0]]).repeat(o.shape[0] // 2, 1), FixedQ(), torch.zeros(n, 1), 2, 2
    )
    assert abs((picks[:, 0] > 0).float().mean().item() - 0.75) < 0.015


# ---------------------------------------------------------------------------------------------------- QSM


def test_qsm_score_target_is_minus_mq_times_mean_critic_action_gradient(task):
    agent = make_agent(QSM, task, m_q=37.0)
    agent.critic.double()
    obs, noisy = torch.randn(6, OBS_DIM, dtype=torch.float64), torch.randn(6, ACT_DIM, dtype=torch.float64)
    target = agent.score_target(obs, noisy)

    def q_bar(a):
        return agent.critic(obs, a).mean(0)

    h = 1e-6
    grad = torch.stack(
        [(q_bar(noisy + h * e) - q_bar(noisy - h * e)) / (2 * h) for e in torch.eye(ACT_DIM, dtype=torch.float64)], -1
    )
    torch.testing.assert_close(target, -37.0 * grad, rtol=1e-6, atol=1e-8)


def test_qsm_actor_loss_regresses_epsilon_on_score_target_at_forward_noised_action(task):
    agent = make_agent(QSM, task, diffusion_steps=5)
    obs, actions = torch.randn(8, OBS_DIM), torch.rand(8, ACT_DIM) * 2 - 1
    torch.manual_seed(11)
    loss = agent.actor_loss(obs, actions)

    torch.manual_seed(11)
    t = torch.randint(0, 5, (8,))
    noise = torch.randn(8, ACT_DIM)
    abar = vp_alphas_cumprod(5)[t].unsqueeze(-1)
    noisy = abar.sqrt() * actions + (1 - abar).sqrt() * noise
    noisy.requires_grad_(True)
    q = agent.critic(obs, noisy)
    grad = 0.5 * (
        torch.autograd.grad(q[0].sum(), noisy, retain_graph=True)[0] + torch.autograd.grad(q[1].sum(), noisy)[0]
    )
    expected = (agent.actor(noisy.detach(), t.float(), obs) - (-agent.config.m_q * grad)).pow(2).mean()
    torch.testing.assert_close(loss, expected)


def test_qsm_exploration_adds_gaussian_noise_to_the_ddpm_sample(task):
    agent = make_agent(QSM, task)
    obs = torch.randn(4000, OBS_DIM)
    torch.manual_seed(5)
    clean = agent.act(obs, deterministic=True)
    torch.manual_seed(5)
    noisy = agent.act(obs, deterministic=False)
    inside = (noisy.abs() < 1) & (clean.abs() < 0.7)
    std = (noisy - clean)[inside].std().item()
    assert abs(std - 0.1) < 0.01


# -------------------------------------------------------------------------------------------- Diffusion-QL


def diffusion_ql_chain(agent, obs: torch.Tensor, steps: int) -> torch.Tensor:
    """Diffusion-QL's reverse chain written from Ho et al. eqs. 6–7 with x̂_0 clipping, drawing from the global RNG."""
    b = obs.shape[0]
    abar = vp_alphas_cumprod(steps)
    betas = 1 - abar / torch.cat([torch.ones(1), abar[:-1]])
    x = torch.randn(b, ACT_DIM)
    for i in reversed(range(steps)):
        prev = abar[i - 1] if i > 0 else torch.tensor(1.0)
        eps = agent.actor(x, torch.full((b,), float(i)), obs)
        x0 = (x / abar[i].sqrt() - (1 / abar[i] - 1).sqrt() * eps).clamp(-1, 1)
        mean = (betas[i] * prev.sqrt() * x0 + (1 - prev) * (1 - betas[i]).sqrt() * x) / (1 - abar[i])
        x = mean + (betas[i] * (1 - prev) / (1 - abar[i])).sqrt() * torch.randn(b, ACT_DIM) if i > 0 else mean
    return x.clamp(-1, 1)


def coin_normalised_q(q: torch.Tensor) -> torch.Tensor:
    """−Q_i/|Q_j| with the coin drawn next from the global RNG (online_agent.py: q1/|q2| or q2/|q1|)."""
    first = bool(torch.rand(()) < 0.5)
    num, den = (q[0], q[1]) if first else (q[1], q[0])
    return -num.mean() / den.abs().mean()


@pytest.mark.parametrize("cls", [DiffusionQL, ConsistencyAC])
def test_online_actor_loss_is_normalised_q_without_bc_term(task, cls):
    """The Consistency-AC repository's online agent: actor_loss = q_loss, no behaviour cloning (for both models)."""
    agent = make_agent(cls, task, diffusion_steps=3) if cls is DiffusionQL else make_agent(cls, task)
    b = 8
    obs = torch.randn(b, OBS_DIM)
    losses = []
    for actions in (torch.rand(b, ACT_DIM) * 2 - 1, torch.zeros(b, ACT_DIM)):
        torch.manual_seed(21)
        losses.append(agent.actor_loss(obs, actions))
    assert losses[0].keys() == {"actor_loss"}
    torch.testing.assert_close(losses[0]["actor_loss"], losses[1]["actor_loss"])  # the replay actions play no part
    torch.manual_seed(21)
    sample = diffusion_ql_chain(agent, obs, 3) if cls is DiffusionQL else agent.actor(obs)
    expected = coin_normalised_q(agent.critic(obs, sample))
    torch.testing.assert_close(losses[0]["actor_loss"], expected)


def test_diffusion_ql_paper_loss_option_is_bc_plus_eta_times_normalised_q(task):
    eta, steps, b = 2.5, 3, 8
    agent = make_agent(DiffusionQL, task, eta=eta, diffusion_steps=steps, bc_term=True)
    obs, actions = torch.randn(b, OBS_DIM), torch.rand(b, ACT_DIM) * 2 - 1
    torch.manual_seed(21)
    losses = agent.actor_loss(obs, actions)

    abar = vp_alphas_cumprod(steps)
    torch.manual_seed(21)
    t = torch.randint(0, steps, (b,))
    noise = torch.randn(b, ACT_DIM)
    x_t = abar[t].sqrt().unsqueeze(-1) * actions + (1 - abar[t]).sqrt().unsqueeze(-1) * noise
    expected_bc = (agent.actor(x_t, t.float(), obs) - noise).pow(2).mean()
    expected_q = coin_normalised_q(agent.critic(obs, diffusion_ql_chain(agent, obs, steps)))
    torch.testing.assert_close(losses["bc_loss"], expected_bc)
    torch.testing.assert_close(losses["q_loss"], expected_q)
    torch.testing.assert_close(losses["actor_loss"], expected_bc + eta * expected_q)


def test_diffusion_ql_ema_actor_waits_for_ema_start_then_tracks_every_fifth_update(task):
    agent = make_agent(DiffusionQL, task, ema_start=2, ema_every=5, ema_decay=0.5)
    buffer = filled_buffer()
    initial = [p.clone() for p in agent.actor_ema.parameters()]
    for _ in range(2):
        agent.update(buffer, 0)
    assert all(torch.equal(a, b) for a, b in zip(initial, agent.actor_ema.parameters()))
    for _ in range(3):  # updates 2, 3, 4: none is a multiple of 5
        agent.update(buffer, 0)
    assert all(torch.equal(a, b) for a, b in zip(initial, agent.actor_ema.parameters()))
    actor_before = [p.clone() for p in agent.actor.parameters()]
    agent.update(buffer, 0)  # update 5: ema <- 0.5 ema + 0.5 actor (taken after this update's actor step)
    for ema, old, new in zip(agent.actor_ema.parameters(), initial, agent.actor.parameters()):
        torch.testing.assert_close(ema, 0.5 * old + 0.5 * new)
    assert not all(torch.equal(a, b) for a, b in zip(actor_before, agent.actor.parameters()))


# ------------------------------------------------------------------------------------------ Consistency-AC


def test_consistency_function_boundary_condition_is_identity(task):
    agent = make_agent(ConsistencyAC, task)
    x, obs = torch.randn(10, ACT_DIM) * 5, torch.randn(10, OBS_DIM)
    torch.testing.assert_close(agent.actor.consistency(x, agent.config.sigma_min, obs), x, rtol=0, atol=0)
    assert not torch.allclose(agent.actor.consistency(x, 2.0, obs), x)


def test_consistency_sampling_chain_matches_hand_computation(task):
    agent = make_agent(ConsistencyAC, task)
    obs, b = torch.randn(7, OBS_DIM), 7
    torch.manual_seed(4)
    got = agent.actor(obs)

    def f(x, sigma):
        c_skip = 0.25 / ((sigma - 0.002) ** 2 + 0.25)
        c_out = 0.5 * (sigma - 0.002) / math.sqrt(sigma**2 + 0.25)
        return c_skip * x + c_out * agent.actor.net(x, torch.full((b,), sigma), obs)

    sigmas = [80.0, 60.5, 41.0, 21.5, 2.0]  # linspace(2, 80, 5), descending
    torch.manual_seed(4)
    a = f(80.0 * torch.randn(b, ACT_DIM), 80.0)
    for sigma in sigmas[1:]:
        a = f(a + math.sqrt(sigma**2 - 0.002**2) * torch.randn(b, ACT_DIM), sigma)
    torch.testing.assert_close(got, a.clamp(-1, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [DiffusionQL, ConsistencyAC])
def test_online_epsilon_follows_online_py_schedule_and_is_off_in_evaluation(task, cls):
    """ε = max(1 + (0.01 − 1)·t/T, 0.01) with T = 10% of 1e6 vector steps × 3 envs = 3e5 env steps."""
    agent = make_agent(cls, task)
    schedule = {0: 1.0, 150_000: 0.505, 300_000: 0.01, 1_000_000: 0.01}
    for env_step, epsilon in schedule.items():
        agent.env_step = env_step
        assert agent.epsilon() == pytest.approx(epsilon)
    agent.env_step = 150_000
    obs = torch.zeros(2000, OBS_DIM)
    torch.manual_seed(0)
    greedy = agent.act(obs, deterministic=True)
    torch.manual_seed(0)
    explored = agent.act(obs, deterministic=False)
    changed = (greedy != explored).any(-1).float().mean().item()
    assert abs(changed - 0.505) < 0.05


@pytest.mark.parametrize(("cls", "every"), [(DiffusionQL, 12), (ConsistencyAC, 12), (DACER, 20)])
def test_updates_once_every_n_env_steps(task, cls, every):
    """One update per 12 env steps (online.py: every 4th step of 3 vector envs), DACER one per 20 (20 vector envs);
    in between ``update`` returns the last update's metrics."""
    agent = make_agent(cls, task, train_every=every)
    buffer = filled_buffer()
    trained_at, metrics = [], agent.last_metrics
    for env_step in range(1, 2 * every + 1):
        before = agent.gradient_steps
        result = agent.update(buffer, env_step)
        if agent.gradient_steps > before:
            trained_at.append(env_step)
            metrics = result
        else:
            assert result is metrics
    assert trained_at == [every, 2 * every]


# ---------------------------------------------------------------------------------------------------- DIPO


def improvement_inputs(agent: DIPO, buffer: ReplayBuffer, updates: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, actions) that each update's action-gradient improvement started from."""
    seen, improve = [], agent._improve_actions

    def recording(obs, actions):
        seen.append(actions.clone())
        return improve(obs, actions)

    agent._improve_actions = recording
    rows = []
    for step in range(updates):
        state = buffer.generator.get_state()
        agent.update(buffer, 100 + step)
        after = buffer.generator.get_state()
        buffer.generator.set_state(state)
        buffer.sample(agent.config.batch_size)  # the critic minibatch
        rows.append(buffer.sample(agent.config.batch_size).indices)  # the improvement minibatch
        assert torch.equal(buffer.generator.get_state(), after)
    return list(zip(rows, seen, strict=True))


def test_dipo_improves_the_executed_actions_afresh_by_default(task):
    """The official DiffusionMemory.replace is a no-op: every update starts from the executed actions."""
    agent = make_agent(DIPO, task)
    buffer = filled_buffer(rows=8)  # few rows: later minibatches redraw rows improved before
    executed = buffer.actions.clone()
    for rows, started_from in improvement_inputs(agent, buffer, updates=3):
        torch.testing.assert_close(started_from, executed[rows], rtol=0, atol=0)
    assert agent.memory_actions is None
    torch.testing.assert_close(buffer.actions, executed, rtol=0, atol=0)


def test_dipo_write_back_option_starts_from_previously_improved_actions(task):
    """The paper's Alg. 1 (``write_back``): a redrawn row starts from its last improvement, not the executed action."""
    agent = make_agent(DIPO, task, write_back=True)
    buffer = filled_buffer(rows=8)
    executed = buffer.actions.clone()
    (rows0, start0), (rows1, start1) = improvement_inputs(agent, buffer, updates=2)
    torch.testing.assert_close(start0, executed[rows0], rtol=0, atol=0)
    improved_before = set(rows0.tolist())
    redrawn = torch.tensor([row in improved_before for row in rows1.tolist()])
    assert redrawn.any()
    assert not torch.allclose(start1[redrawn], executed[rows1][redrawn])
    torch.testing.assert_close(start1[~redrawn], executed[rows1][~redrawn], rtol=0, atol=0)
    torch.testing.assert_close(buffer.actions, executed, rtol=0, atol=0)


def test_dipo_actor_target_follows_every_nth_update(task):
    agent = make_agent(DIPO, task, actor_target_every=2, tau=0.5)
    buffer = filled_buffer()
    moved = []
    for step in range(4):
        before = [p.clone() for p in agent.actor_target.parameters()]
        agent.update(buffer, 100 + step)
        moved.append(not all(torch.equal(a, b) for a, b in zip(before, agent.actor_target.parameters())))
    assert moved == [True, False, True, False]


def test_dipo_action_gradient_improves_memory_actions_and_leaves_replay_actions(task):
    agent = make_agent(DIPO, task, action_gradient_steps=15, action_lr=0.05, write_back=True)
    buffer = filled_buffer()
    agent.sync_memory(buffer)
    executed = buffer.actions.clone()
    batch = buffer.sample(16)
    before = agent.memory_actions[batch.indices].clone()
    improved = agent.improve_memory(batch.obs, batch.indices)

    # independent: torch's Adam and clip_grad_norm_ on a leaf tensor, as the paper's Alg. 1 describes
    leaf = before.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([leaf], lr=0.05, eps=1e-5)
    for _ in range(15):
        optimiser.zero_grad()
        (-agent.critic(batch.obs, leaf).min(0).values).sum().backward()
        nn.utils.clip_grad_norm_([leaf], 0.1 * ACT_DIM)
        optimiser.step()
        with torch.no_grad():
            leaf.clamp_(-1, 1)
    torch.testing.assert_close(improved, leaf.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(agent.memory_actions[batch.indices], improved)
    assert improved.abs().max() <= 1.0
    q_before = agent.critic(batch.obs, before).min(0).values
    q_after = agent.critic(batch.obs, improved).min(0).values
    assert (q_after >= q_before - 1e-6).all() and (q_after > q_before).float().mean() > 0.8
    torch.testing.assert_close(buffer.actions, executed, rtol=0, atol=0)


def test_dipo_memory_copies_rows_written_since_last_update(task):
    agent = make_agent(DIPO, task, write_back=True)
    buffer = filled_buffer(rows=10, capacity=12)
    agent.sync_memory(buffer)
    agent.memory_actions[:10] = 0.5  # pretend rows were improved
    for k in range(4):  # wraps around the ring
        buffer.add(np.zeros(OBS_DIM), np.full(ACT_DIM, -0.25 * k), 0.0, np.zeros(OBS_DIM), False)
    agent.sync_memory(buffer)
    expected = torch.full((12, ACT_DIM), 0.5)
    expected[[10, 11, 0, 1]] = torch.tensor([0.0, -0.25, -0.5, -0.75]).unsqueeze(-1).expand(-1, ACT_DIM)
    torch.testing.assert_close(agent.memory_actions, expected)


def test_dipo_evaluation_uses_noise_free_reverse_chain(task):
    agent = make_agent(DIPO, task)
    obs = torch.randn(4, OBS_DIM)
    torch.manual_seed(2)
    got = agent.act(obs, deterministic=True)
    torch.manual_seed(2)
    expected = agent.schedule.sample(agent.actor, obs, ACT_DIM, noise_ratio=0.0)
    torch.testing.assert_close(got, expected)
    torch.manual_seed(2)
    assert not torch.allclose(agent.act(obs, deterministic=False), got)


# ---------------------------------------------------------------------------------------------------- QVPO


def test_qvpo_selects_best_candidate_with_advantage_weight(task):
    rng = np.random.default_rng(0)
    candidates, q = rng.uniform(-1, 1, (5, 7, ACT_DIM)), rng.normal(size=(5, 7))
    best, weight = QVPO.select_best(torch.tensor(candidates), torch.tensor(q))
    for b in range(5):
        k = int(np.argmax(q[b]))
        np.testing.assert_allclose(best[b].numpy(), candidates[b, k])
        assert weight[b].item() == pytest.approx(max(q[b, k] - q[b].mean(), 0.0))


def test_qvpo_actor_loss_is_advantage_weighted_epsilon_loss_with_uniform_entropy_rows(task):
    agent = make_agent(QVPO, task, entropy_samples=3, entropy_alpha=0.1)
    obs, b, k = torch.randn(4, OBS_DIM), 4, agent.config.train_samples
    torch.manual_seed(8)
    loss, _ = agent.actor_loss(obs)

    torch.manual_seed(8)
    with torch.no_grad():
        candidates, q = agent.candidates(obs, k, agent.actor, agent.critic)
    q_np = q.numpy()
    chosen = q_np.argmax(1)
    best = candidates[torch.arange(b), torch.tensor(chosen)]
    weight = torch.tensor(q_np.max(1) - q_np.mean(1), dtype=torch.float32)
    uniform = torch.rand(b * 3, ACT_DIM) * 2 - 1
    actions = torch.cat([best, uniform])
    states = torch.cat([obs] + [obs] * 3)
    weights = torch.cat([weight] + [0.1 * weight] * 3)
    steps = agent.config.diffusion_steps
    t = torch.randint(0, steps, (4 * b,))
    noise = torch.randn(4 * b, ACT_DIM)
    abar = torch.cumprod(1 - cosine_beta_schedule(steps), 0)[t].unsqueeze(-1)
    pred = agent.actor(abar.sqrt() * actions + (1 - abar).sqrt() * noise, t.float(), states)
    expected = (weights.unsqueeze(-1) * (pred - noise).pow(2)).mean()
    torch.testing.assert_close(loss, expected)


def test_qvpo_entropy_weight_decays_linearly_over_the_run(task):
    """main.py: α_ent = min(0.02, max(0.002, 0.02 − t/N·0.02)), set after each env step t of an N-step run."""
    assert entropy_weight(0.02, 0.002, 0, 1000) == pytest.approx(0.02)
    assert entropy_weight(0.02, 0.002, 500, 1000) == pytest.approx(0.01)
    assert entropy_weight(0.02, 0.002, 950, 1000) == pytest.approx(0.002)
    agent = make_agent(QVPO, task)
    agent.total_steps = 1000  # what the trainer sets
    buffer = filled_buffer()
    weights = {}
    for env_step in (1, 501, 951):  # the first update uses α₀; later ones the value set after the previous step
        weights[env_step] = agent.update(buffer, env_step)["entropy_alpha"].item()
    assert weights == pytest.approx({1: 0.02, 501: 0.01, 951: 0.002})
    fixed = make_agent(QVPO, task, entropy_decay_steps=0)
    fixed.total_steps = 1000
    fixed.update(buffer, 1)
    assert fixed.update(buffer, 951)["entropy_alpha"].item() == pytest.approx(0.02)


def test_qvpo_evaluation_is_best_of_eval_samples_by_q(task):
    agent = make_agent(QVPO, task)
    obs = torch.randn(3, OBS_DIM)
    torch.manual_seed(1)
    got = agent.act(obs, deterministic=True)
    torch.manual_seed(1)
    candidates, q = agent.candidates(obs, agent.config.eval_samples, agent.actor, agent.critic)
    torch.testing.assert_close(got, candidates[torch.arange(3), q.argmax(1)])


# --------------------------------------------------------------------------------------------------- DACER


@pytest.mark.parametrize(("task_name", "scale"), [("gym/Humanoid-v4", 0.15), ("gym/Pendulum-v1", 0.1)])
@pytest.mark.parametrize("log_alpha", [math.log(3.0), math.log(0.2)])
def test_dacer_noise_scale_is_alpha_times_the_official_scale(task_name, scale, log_alpha):
    """exp(log α)·0.15 on Humanoid/HalfCheetah, ·0.1 on other envs (relax/network/dacer.py and its comment)."""
    agent = make_agent(DACER, get_task(task_name), hidden=(16, 16), diffusion_hidden=(16, 16))
    with torch.no_grad():
        agent.log_alpha.fill_(log_alpha)
    assert agent.noise_std().item() == pytest.approx(math.exp(log_alpha) * scale, rel=1e-6)
    obs = torch.randn(50, OBS_DIM)
    torch.manual_seed(9)
    noisy = agent.act(obs, deterministic=False)
    torch.manual_seed(9)
    clean = agent.act(obs, deterministic=True)
    z = torch.randn(50, ACT_DIM)  # the draw that follows the chain's
    torch.testing.assert_close(noisy, (clean + math.exp(log_alpha) * scale * z).clamp(-1, 1))


def test_gmm_entropy_matches_entropy_of_a_well_separated_mixture():
    torch.manual_seed(0)
    centres = torch.tensor([[-0.6, -0.6], [0.0, 0.6], [0.6, -0.6]])
    std = torch.tensor([0.05, 0.08])
    samples = (centres[torch.randint(0, 3, (4, 600))] + std * torch.randn(4, 600, 2)).float()
    # separated components: H = Σ w_k H(N_k) + H(w) with w uniform
    expected = (1 + math.log(2 * math.pi)) + torch.log(std).sum().item() + math.log(3)
    estimate = gmm_entropy(samples, components=3, iterations=60).item()
    assert estimate == pytest.approx(expected, abs=0.05)


def test_dacer_alpha_step_moves_towards_target_entropy(task):
    agent = make_agent(DACER, task, alpha_every=1, alpha_lr=0.1)
    buffer = filled_buffer()
    before = agent.log_alpha.item()
    metrics = agent.update(buffer, 0)
    entropy = metrics["entropy"].item()
    assert entropy != 0.0
    direction = math.copysign(1.0, agent.target_entropy - entropy)  # H < H̄: raise α
    assert (agent.log_alpha.item() - before) * direction == pytest.approx(0.1, rel=1e-3)


# -------------------------------------------------------------------------------------------- initialisers


def linear_layers(module: nn.Module):
    """(weight (out, in), bias, fan_in) of every dense layer, each twin-critic member on its own."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            yield m.weight, m.bias, m.in_features
        elif isinstance(m, EnsembleLinear):
            for weight, bias in zip(m.weight, m.bias, strict=True):
                yield weight.T, bias, weight.shape[0]


def _xavier(fan_in: int, fan_out: int) -> tuple[float, float]:
    return math.sqrt(2 / (fan_in + fan_out)), math.sqrt(6 / (fan_in + fan_out))


#: class -> (std, bound) of the official initialiser given (fan_in, fan_out), and whether biases start at 0.
INIT_LAWS = {
    QSM: (_xavier, True),  # jaxrl5 default_init: xavier_uniform
    # init_weights: N(0, 1/(2√in)); its truncation loop never writes back
    DIPO: (lambda i, o: (0.5 / math.sqrt(i), math.inf), True),
    QVPO: (lambda i, o: (0.5 / math.sqrt(i), math.inf), True),
    DACER: (lambda i, o: (0.8796256 / math.sqrt(i), 2 / math.sqrt(i)), True),  # hk.Linear: TN(σ = 1/√in, ±2σ)
    DiffusionQL: (lambda i, o: (1 / math.sqrt(3 * i), 1 / math.sqrt(i)), False),  # PyTorch default, as its code
    ConsistencyAC: (lambda i, o: (1 / math.sqrt(3 * i), 1 / math.sqrt(i)), False),
}


@pytest.mark.parametrize("cls", list(INIT_LAWS))
def test_weights_start_from_the_official_initialiser(task, cls):
    """Per layer (≥ 2000 weights, so the std is known to ~2%): std and range of the official law, zero biases."""
    torch.manual_seed(0)
    agent = cls(task, OBS_DIM, ACT_DIM, cls.default_config(task), CPU)
    law, zero_bias = INIT_LAWS[cls]
    checked = 0
    for weight, bias, fan_in in (*linear_layers(agent.actor), *linear_layers(agent.critic)):
        std, bound = law(fan_in, weight.shape[0])
        assert weight.abs().max() <= bound * (1 + 1e-6)
        if zero_bias:
            assert not bias.any()
        if weight.numel() >= 2000:
            assert weight.std().item() == pytest.approx(std, rel=0.06)
            checked += 1
    assert checked >= 5
    if cls in (DIPO, QVPO):  # untruncated: about 4.6% of the weights lie beyond 2σ
        weight = next(linear_layers(agent.critic))[0]
        assert (weight.abs() > 2 * 0.5 / math.sqrt(weight.shape[1])).float().mean() > 0.02


def test_dacer_time_features_are_its_scaled_sinusoid():
    """relax/network/blocks.py: [sin(t·θ^(−k/h)), cos(t·θ^(−k/h))]/√d, h = d/2, θ = 1e4."""
    t = torch.tensor([0.0, 3.0, 19.0])
    k = torch.arange(8, dtype=torch.float32)
    angles = t.unsqueeze(-1) * 10000.0 ** (-k / 8)
    expected = torch.cat([angles.sin(), angles.cos()], -1) / 4.0
    torch.testing.assert_close(SinusoidalEmbedding(16, scaled=True)(t), expected)


# ------------------------------------------------------------------------------------------------- generic


@pytest.mark.parametrize("cls", list(TINY))
def test_update_returns_scalar_tensors_and_resume_is_bit_exact(task, cls):
    buffer = filled_buffer()
    agent = make_agent(cls, task, seed=1)
    for step in range(3):
        agent.update(buffer, 100 + step)
    saved = io.BytesIO()
    torch.save(agent.state_dict(), saved)  # what a checkpoint does; also breaks storage sharing
    saved.seek(0)
    clone = make_agent(cls, task, seed=2)
    clone.load_state_dict(torch.load(saved, weights_only=False))
    buffer_state = buffer.state_dict()
    torch.manual_seed(7)
    metrics = agent.update(buffer, 103)
    action = agent.act(torch.zeros(2, OBS_DIM), deterministic=False)
    buffer.load_state_dict(buffer_state)
    torch.manual_seed(7)
    metrics_clone = clone.update(buffer, 103)
    action_clone = clone.act(torch.zeros(2, OBS_DIM), deterministic=False)
    assert metrics and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())
    assert all(torch.equal(metrics[k], metrics_clone[k]) for k in metrics)
    torch.testing.assert_close(action, action_clone, rtol=0, atol=0)
    assert action.shape == (2, ACT_DIM) and action.abs().max() <= 1.0


@pytest.mark.parametrize("name", ["qsm", "diffusion-ql", "consistency-ac", "dipo", "qvpo", "dacer"])
def test_registered_names_load(name):
    cls = load_algorithm(name)
    assert ALGORITHMS[name].endswith(cls.__name__)


def test_per_suite_defaults():
    humanoid, hopper, ant, cheetah = (get_task(f"gym/{n}-v4") for n in ("Humanoid", "Hopper", "Ant", "HalfCheetah"))
    assert DACER.default_config(humanoid).hidden == (512, 512, 512)
    assert DACER.default_config(humanoid).diffusion_hidden == (512, 512, 512)
    assert DACER.default_config(hopper).hidden == (256, 256, 256)
    # DACER: the code's values are Humanoid's and HalfCheetah's, its "other envs" comments give the rest
    for official in (humanoid, cheetah):
        assert (DACER.default_config(official).learning_starts, DACER.default_config(official).noise_scale) == (
            200_000,
            0.15,
        )
    assert (DACER.default_config(hopper).learning_starts, DACER.default_config(hopper).noise_scale) == (30_000, 0.1)
    assert DACER.default_config(hopper).train_every == 20
    # QSM: M_q = 120 only on the domains its README names (humanoid, quadruped)
    m_q = {name: QSM.default_config(get_task(name)).m_q for name in ("dmc/humanoid-walk", "dmc/quadruped-run")}
    m_q |= {name: QSM.default_config(get_task(name)).m_q for name in ("dmc/dog-run", "gym/Humanoid-v4")}
    assert m_q == {"dmc/humanoid-walk": 120.0, "dmc/quadruped-run": 120.0, "dmc/dog-run": 50.0, "gym/Humanoid-v4": 50.0}
    # DIPO: the README's per-task table
    assert (DIPO.default_config(ant).grad_norm, DIPO.default_config(ant).action_grad_ratio) == (0.8, 0.1)
    assert (DIPO.default_config(hopper).grad_norm, DIPO.default_config(hopper).action_grad_ratio) == (1.0, 0.3)
    c = DIPO.default_config(cheetah)
    assert (c.action_gradient_steps, c.actor_target_every, c.action_grad_ratio) == (40, 2, 0.08)
    c = DIPO.default_config(get_task("dmc/dog-stand"))
    assert (c.grad_norm, c.action_grad_ratio, c.action_gradient_steps, c.write_back) == (2.0, 0.1, 20, False)
    assert DIPO.default_config(hopper).diffusion_steps == 100
    assert QVPO.default_config(hopper).diffusion_steps == 20
    # the Consistency-AC repository's online loop, for both of its models
    for cls in (DiffusionQL, ConsistencyAC):
        c = cls.default_config(hopper)
        assert (c.buffer_size, c.actor_lr, c.critic_lr, c.train_every, c.learning_starts) == (
            100_000,
            1e-5,
            3e-4,
            12,
            0,
        )
        assert (c.epsilon_start, c.epsilon_end, c.epsilon_decay_steps) == (1.0, 0.01, 300_000)
    assert not DiffusionQL.default_config(hopper).bc_term
    # one evaluation protocol: 5 episodes for every method
    episodes = {cls: cls.default_config(hopper).eval_episodes for cls in TINY}
    assert set(episodes.values()) == {5}


def test_twin_critic_members_are_independent():
    critic = TwinCritic(OBS_DIM, ACT_DIM, (8,))
    q = critic(torch.randn(5, OBS_DIM), torch.randn(5, ACT_DIM))
    assert q.shape == (2, 5) and not torch.allclose(q[0], q[1])
