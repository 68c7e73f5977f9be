"""The diffusion policy against independent computations: schedule, EM kernels, full chain, entropy bound."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from dime.diffusion_policy import (
    DiffusionPolicy,
    cosine_dt_shape,
    entropy_bound_costs,
    inverse_softplus,
    kernel_log_densities,
)


def test_cosine_schedule_by_hand():
    n, s, m = 16, 0.008, 0.001
    expected = []
    for k in range(n):
        t = (n - k) / n
        expected.append((1 - m) * math.cos(math.pi / 2 * (1 + s - t) / (1 + s)) ** 2 + m)
    shape = cosine_dt_shape(n, s, m)
    torch.testing.assert_close(shape, torch.tensor(expected, dtype=torch.float32))
    # Two entries worked out on paper: k = 0 is t = 1, k = 15 is t = 1/16.
    assert float(shape[0]) == pytest.approx(0.999 * math.cos(math.pi / 2 * 0.008 / 1.008) ** 2 + 0.001, rel=1e-6)
    assert float(shape[0]) == pytest.approx(0.99984, abs=1e-5)
    assert float(shape[15]) == pytest.approx(0.999 * math.cos(math.pi / 2 * 0.9455 / 1.008) ** 2 + 0.001, rel=1e-5)
    assert float(shape[15]) == pytest.approx(0.010456, abs=1e-5)
    assert torch.all(shape[1:] < shape[:-1]), "large steps at the prior end, small at the action end"


def test_initial_parameters():
    policy = DiffusionPolicy(obs_dim=3, act_dim=2)
    assert float(policy.log_dt.detach()) == pytest.approx(-2.2521685, abs=1e-6)
    assert torch.allclose(policy.friction, torch.full((2,), 0.5413249))
    assert float(F.softplus(policy.log_dt.detach())) == pytest.approx(0.1, rel=1e-6)
    # σ² = 1/softplus(friction) = 1, so η_k = 0.1·shape(k)
    torch.testing.assert_close(policy.step_sizes(), 0.1 * cosine_dt_shape(16).unsqueeze(-1).expand(16, 2))
    assert torch.all(policy.score.phase == 0)
    out_layer = policy.score.trunk[-1]
    assert torch.all(out_layer.weight == 1e-8) and torch.all(out_layer.bias == 0)
    assert inverse_softplus(30.0) == 30.0


def test_one_euler_maruyama_step_log_densities_match_torch_distributions():
    torch.manual_seed(0)
    batch, dim, prior_var = 6, 3, 6.25
    x0 = torch.randn(batch, dim, dtype=torch.float64) * 2.5
    score = torch.randn(batch, dim, dtype=torch.float64)
    eta = torch.tensor([[0.1, 0.03, 0.5]], dtype=torch.float64)
    noise = torch.randn(batch, dim, dtype=torch.float64)
    tau = torch.sqrt(2 * eta[0])
    mean_forward = x0 + eta[0] * (-x0 / prior_var + score)
    x1 = mean_forward + tau * noise
    log_f, log_b = kernel_log_densities(torch.stack([x0, x1]), mean_forward.unsqueeze(0), eta, prior_var)
    expected_f = Normal(mean_forward, tau).log_prob(x1).sum(-1)
    expected_b = Normal(x1 + eta[0] * (-x1 / prior_var), tau).log_prob(x0).sum(-1)
    torch.testing.assert_close(log_f[0], expected_f)
    torch.testing.assert_close(log_b[0], expected_b)


def _randomise_score_output(policy: DiffusionPolicy) -> None:
    """Give f_θ a non-negligible output so the chain is not the plain OU reference process."""
    with torch.no_grad():
        policy.score.trunk[-1].weight.normal_(0.0, 0.3)
        policy.score.trunk[-1].bias.normal_(0.0, 0.3)
        policy.score.phase.normal_()


def _reference_score(policy, x, obs, k):
    """f_θ evaluated as the reference does: one Dense on concat(x, s, h_t) per sample, no precomputation."""
    net = policy.score
    angle = k * net.frequencies + net.phase
    h_t = net.time_coder(torch.cat([torch.sin(angle), torch.cos(angle)]))
    z = torch.cat([x, obs, h_t.expand(x.shape[0], -1)], dim=-1)
    return net.trunk(net.input_layer(z)).clamp(-1e4, 1e4)


def test_full_chain_replays_against_step_by_step_reference():
    """Actions and costs equal an independent replay of the same noise through §3.4/§3.6 with torch.distributions."""
    torch.manual_seed(1)
    obs_dim, act_dim, steps, batch = 4, 2, 5, 7
    policy = DiffusionPolicy(obs_dim, act_dim, num_steps=steps, hidden=16, num_layers=3).double()
    _randomise_score_output(policy)
    with torch.no_grad():
        policy.friction.copy_(torch.tensor([0.2, 1.5]))  # σ² differs per dimension
    obs = torch.randn(batch, obs_dim, dtype=torch.float64)
    torch.manual_seed(123)
    sample = policy(obs)

    torch.manual_seed(123)
    noise = torch.randn(steps + 1, batch, act_dim, dtype=torch.float64)
    sigma2 = 1 / F.softplus(policy.friction)
    delta = F.softplus(policy.log_dt) * cosine_dt_shape(steps).double()
    x = noise[0] * 2.5
    x_initial, log_ratio = x, torch.zeros(batch, dtype=torch.float64)
    for k in range(steps):
        eta = delta[k] * sigma2
        tau = torch.sqrt(2 * eta)
        mean_f = x + eta * (-x / 6.25 + _reference_score(policy, x, obs, float(k)))
        x_next = mean_f + tau * noise[k + 1]
        mean_b = x_next + eta * (-x_next / 6.25)
        log_ratio += Normal(mean_b, tau).log_prob(x).sum(-1) - Normal(mean_f, tau).log_prob(x_next).sum(-1)
        x = x_next
    expected_running = -(log_ratio + torch.log(1 - torch.tanh(x) ** 2).sum(-1))
    expected_terminal = Normal(0.0, 2.5).log_prob(x_initial).sum(-1)
    with torch.no_grad():
        torch.testing.assert_close(sample.actions, torch.tanh(x))
        torch.testing.assert_close(sample.running_cost, expected_running)
        torch.testing.assert_close(sample.terminal_cost, expected_terminal)


def test_entropy_bound_is_an_upper_bound_on_log_pi_with_the_expected_gap():
    """One step from the initial (f_θ ≈ 0) policy: x_1 = c·x_0 + τ·ε is Gaussian, so log π is known in closed form.

    E[running + terminal − log π(a)] must equal E_{x_1} KL(p(x_0|x_1) ‖ reference kernel) ≥ 0 (Gibbs' gap).
    A sign error in any log-density, or a missing tanh or prior term, breaks the equality.
    """
    torch.manual_seed(2)
    dim, n = 2, 200_000
    policy = DiffusionPolicy(3, dim, num_steps=1, hidden=8, num_layers=1, init_dt=5.0).double()
    obs = torch.randn(n, 3, dtype=torch.float64)
    with torch.no_grad():
        sample = policy(obs)
        eta = float(policy.step_sizes()[0, 0])
    prior_var = 6.25
    c = 1 - eta / prior_var
    var_x1 = c**2 * prior_var + 2 * eta
    x1 = torch.atanh(sample.actions)
    log_pi = Normal(0.0, math.sqrt(var_x1)).log_prob(x1).sum(-1) - torch.log(1 - sample.actions**2).sum(-1)
    gap = sample.running_cost + sample.terminal_cost - log_pi
    # Posterior of x_0 given x_1 versus the reference kernel N(c·x_1, 2η), per dim, averaged over x_1.
    post_var = prior_var * 2 * eta / var_x1
    post_gain = c * prior_var / var_x1
    expected_kl = 0.5 * (math.log(2 * eta / post_var) + (post_var + (post_gain - c) ** 2 * var_x1) / (2 * eta) - 1)
    stderr = float(gap.std()) / math.sqrt(n)
    assert expected_kl * dim > 10 * stderr, "test not sensitive enough"
    assert float(gap.mean()) == pytest.approx(expected_kl * dim, abs=4 * stderr)


def test_entropy_bound_costs_formula():
    """running = −(Σ_k (log B_k − log F_k) + Σ_d log(1 − tanh² x_N)), terminal = log N(x_0; 0, σ₀²)."""
    torch.manual_seed(3)
    trajectory = torch.randn(4, 5, 2, dtype=torch.float64)
    means = torch.randn(3, 5, 2, dtype=torch.float64)
    eta = torch.rand(3, 2, dtype=torch.float64) + 0.1
    running, terminal = entropy_bound_costs(trajectory, means, eta, 2.5)
    log_f, log_b = kernel_log_densities(trajectory, means, eta, 6.25)
    tanh_term = torch.log(1 - torch.tanh(trajectory[-1]) ** 2).sum(-1)
    torch.testing.assert_close(running, -((log_b - log_f).sum(0) + tanh_term))
    torch.testing.assert_close(terminal, Normal(0.0, 2.5).log_prob(trajectory[0]).sum(-1))


def test_gradients_reach_every_actor_parameter():
    torch.manual_seed(4)
    policy = DiffusionPolicy(3, 2, num_steps=4, hidden=16)
    sample = policy(torch.randn(32, 3))
    (sample.running_cost.mean() + sample.actions.sum()).backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert not sample.terminal_cost.requires_grad, "the prior term has no θ-dependence"


def test_actions_in_range_and_fresh_noise():
    policy = DiffusionPolicy(3, 2, num_steps=16, hidden=16)
    obs = torch.zeros(1000, 3)
    with torch.no_grad():
        a, b = policy(obs).actions, policy(obs).actions
    assert a.shape == (1000, 2) and torch.all(a.abs() <= 1)
    assert not torch.equal(a, b)
    # At init f_θ ≈ 0, the chain is the OU reference process started at its stationary law: latents ~ N(0, 2.5²).
    assert float(torch.atanh(a.clamp(-1 + 1e-6, 1 - 1e-6)).std()) == pytest.approx(2.5, rel=0.15)
