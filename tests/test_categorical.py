"""C51 support, projection (hand-computed cases, l == u fix, mass), loss and the stacked critic ensemble."""

import math

import numpy as np
import pytest
import torch

from dime.categorical import (
    DistributionalCritic,
    c51_support,
    categorical_critic_loss,
    project_distribution,
)


def _naive_projection(probs, target_atoms, v_min, v_max):
    """Loop-by-loop C51 with the l == u fix, written from dime.md §4.3 (float64 numpy)."""
    rows, k = probs.shape
    dz = (v_max - v_min) / (k - 1)
    out = np.zeros_like(probs)
    for i in range(rows):
        for j in range(k):
            b = (target_atoms[i, j] - v_min) / dz
            lo, up = math.floor(b), math.ceil(b)
            if lo == up and up > 0:
                lo -= 1
            if lo == up and lo < k - 1:
                up += 1
            out[i, lo] += probs[i, j] * (up - b)
            out[i, up] += probs[i, j] * (b - lo)
    return out


def test_support():
    atoms = c51_support(-200.0, 200.0, 101)
    assert atoms.shape == (101,) and atoms[0] == -200 and atoms[-1] == 200 and atoms[50] == 0
    assert torch.allclose(atoms[1:] - atoms[:-1], torch.full((100,), 4.0))


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (-1.25, {0: 0.25, 1: 0.75}),  # b = 0.75: split between atoms 0 and 1
        (0.5, {2: 0.5, 3: 0.5}),  # b = 2.5
        (1.0, {3: 1.0}),  # on an interior atom (l == u = 3): l <- 2, all mass stays on atom 3
        (-2.0, {0: 1.0}),  # on the lowest atom (l == u = 0): u <- 1, all mass on atom 0
        (2.0, {4: 1.0}),  # on the highest atom (l == u = 4): l <- 3, all mass on atom 4
        (1.9, {3: 0.1, 4: 0.9}),  # just inside the upper edge
    ],
)
def test_projection_hand_computed(target, expected):
    """Support [-2, 2] with 5 atoms (Δz = 1); one unit of mass placed at ``target``."""
    probs = torch.zeros(1, 5, dtype=torch.float64)
    probs[0, 1] = 1.0
    target_atoms = torch.full((1, 5), target, dtype=torch.float64)
    out = project_distribution(probs, target_atoms, -2.0, 2.0)
    want = torch.zeros(1, 5, dtype=torch.float64)
    for index, mass in expected.items():
        want[0, index] = mass
    torch.testing.assert_close(out, want)


def test_projection_bellman_shift_by_hand():
    """r = 1, γ = 0.5 on atoms [-2..2]: Tz = 1 + 0.5·z = [0, 0.5, 1, 1.5, 2], probabilities [.1 .2 .3 .4 0]."""
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0]], dtype=torch.float64)
    atoms = torch.linspace(-2, 2, 5, dtype=torch.float64)
    target_atoms = (1.0 + 0.5 * atoms).clamp(-2, 2).unsqueeze(0)
    out = project_distribution(probs, target_atoms, -2.0, 2.0)
    # 0 -> atom 2 (l == u fix keeps it on atom 2); 0.5 -> atoms 2, 3 half each; 1 -> atom 3; 1.5 -> atoms 3, 4 half each
    expected = torch.tensor([[0.0, 0.0, 0.1 + 0.1, 0.1 + 0.3 + 0.2, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_projection_matches_loop_reference_and_conserves_mass():
    rng = np.random.default_rng(0)
    rows, k, v_min, v_max = 64, 11, -10.0, 10.0
    logits = rng.normal(size=(2, rows, k))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    atoms = np.linspace(v_min, v_max, k)
    rewards = rng.choice([-30.0, -3.0, 0.0, 2.0, 4.0, 30.0], size=(rows, 1))  # edges, clipping, exact atom hits
    discount = rng.choice([0.0, 0.5, 0.99, 1.0], size=(rows, 1))
    target_atoms = np.clip(rewards + discount * atoms, v_min, v_max)
    out = project_distribution(torch.tensor(probs), torch.tensor(target_atoms), v_min, v_max)
    for member in range(2):
        np.testing.assert_allclose(out[member].numpy(), _naive_projection(probs[member], target_atoms, v_min, v_max))
    np.testing.assert_allclose(out.sum(-1).numpy(), 1.0, rtol=1e-12)
    assert (out >= 0).all()


def test_loss_matches_numpy():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(7), size=(2, 5))
    probs[0, 0] = np.eye(7)[3]  # exact zeros exercise the 1e-15 inside the log
    target = rng.dirichlet(np.ones(7), size=5)
    loss = categorical_critic_loss(torch.tensor(probs), torch.tensor(target), entropy_coef=0.005)
    log_p = np.log(probs + 1e-15)
    expected = sum(-(target * log_p[c]).sum(-1).mean() + 0.005 * (probs[c] * log_p[c]).sum(-1).mean() for c in range(2))
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    # The entropy term rewards wide predictions: at equal cross-entropy a flatter prediction has lower loss.
    flat = torch.full((1, 1, 4), 0.25, dtype=torch.float64)
    peaked = torch.tensor([[[0.7, 0.1, 0.1, 0.1]]], dtype=torch.float64)
    uniform_target = torch.full((1, 4), 0.25, dtype=torch.float64)
    no_bonus = [float(categorical_critic_loss(p, uniform_target, 0.0)) for p in (flat, peaked)]
    with_bonus = [float(categorical_critic_loss(p, uniform_target, 0.005)) for p in (flat, peaked)]
    assert with_bonus[0] - no_bonus[0] < with_bonus[1] - no_bonus[1]


def _member_forward(critic, member, obs, actions, training_stats=None):
    """One member's forward in plain torch from its slice of the stacked weights, BRN in eval mode."""
    h = torch.cat([obs, actions], dim=-1)
    for i, (norm, linear) in enumerate(zip(critic.norms, critic.linears)):
        h = (h - norm.running_mean[member, 0]) / torch.sqrt(norm.running_var[member, 0] + 1e-3)
        h = h * norm.weight[member, 0] + norm.bias[member, 0]
        h = h @ linear.weight[member] + linear.bias[member, 0]
        if i < 2:
            h = torch.relu(h)
    return torch.softmax(h, -1)


def test_stacked_critic_equals_independent_members():
    torch.manual_seed(0)
    critic = DistributionalCritic(5, 2, -10.0, 10.0, hidden=32, num_atoms=11, brn_warmup_steps=10)
    obs, actions = torch.randn(40, 5) * 3 + 1, torch.rand(40, 2) * 2 - 1
    critic(obs, actions, training=True)  # move running stats away from (0, 1), separately per member
    assert not torch.allclose(critic.norms[1].running_mean[0], critic.norms[1].running_mean[1])
    probs = critic(obs[:7], actions[:7], training=False)
    assert probs.shape == (2, 7, 11)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 7))
    for member in range(2):
        torch.testing.assert_close(probs[member], _member_forward(critic, member, obs[:7], actions[:7]))
    q = critic.expected_value(probs)
    torch.testing.assert_close(q, (probs * torch.linspace(-10, 10, 11)).sum(-1))


def test_joint_pass_updates_input_stats_with_both_halves():
    """CrossQ joint pass: the input BRN's running mean moves towards the mean of the concatenated rows."""
    critic = DistributionalCritic(3, 1, -1.0, 1.0, hidden=8, num_atoms=5)
    obs, next_obs = torch.zeros(10, 3), torch.full((10, 3), 4.0)
    actions = torch.zeros(20, 1)
    critic(torch.cat([obs, next_obs]), actions, training=True)
    expected = torch.tensor([2.0, 2.0, 2.0, 0.0]) * 0.01
    torch.testing.assert_close(critic.norms[0].running_mean, expected.expand(2, 1, 4))


def test_flax_initialisation():
    torch.manual_seed(0)
    critic = DistributionalCritic(100, 8, -1.0, 1.0, hidden=512, num_atoms=101)
    for linear in critic.linears:
        weight = linear.weight.detach()
        fan_in = weight.shape[1]
        std = 1 / math.sqrt(fan_in) / 0.87962566103423978
        assert torch.all(linear.bias == 0)
        assert float(weight.abs().max()) <= 2 * std + 1e-6  # truncated at two standard deviations
        assert float(weight.std()) == pytest.approx(1 / math.sqrt(fan_in), rel=0.05)
    for norm in critic.norms:
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
        assert torch.all(norm.running_mean == 0) and torch.all(norm.running_var == 1)
