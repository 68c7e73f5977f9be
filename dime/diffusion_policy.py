"""DIME's diffusion policy: an N-step Euler–Maruyama sampler with a learned score network (``dime.md`` §3).

Where the entropy bound is computed: :func:`entropy_bound_costs`. It turns the per-step log-densities of the
generative (policy) kernel and of the fixed reference (noising) kernel into the running and terminal costs whose
sum is a per-sample upper-bound estimate of log π(a|s); −(running + terminal) estimates the entropy lower bound
ℓ_θ(s) of the paper (``dime.md`` §0.4, §3.6). Everything else in this module produces its inputs:

* :func:`cosine_dt_shape`: the fixed cosine profile of the step sizes (§3.3), scaled by one learned dt;
* :class:`ScoreNetwork`: f_θ(x, s, k) with Fourier time features and a trainable phase (§3.5);
* :func:`kernel_log_densities`: the Gaussian log-densities of both kernels along a sampled path (§3.4);
* :class:`DiffusionPolicy`: prior → N steps → costs → tanh squashing (§3.6).

Naming: the reference code calls the learned generative kernel "forward" and the fixed noising kernel
"backward"; this module keeps those names (``log_forward``, ``log_backward``) so the two can be compared line by
line, although the paper calls the generative process "backward".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dime.nn import flax_linear

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class PolicySample(NamedTuple):
    """One batch of actions and the costs that replace SAC's log π (shapes (B, A), (B,), (B,))."""

    actions: torch.Tensor
    running_cost: torch.Tensor  # the part α is tuned on (θ-dependent)
    terminal_cost: torch.Tensor  # prior log-density of the initial latent; no θ-dependence


def inverse_softplus(y: float) -> float:
    """isp(y) = log(expm1(y)); the reference returns y itself above 20 where softplus is the identity."""
    return y if y > 20.0 else math.log(math.expm1(y))


def cosine_dt_shape(num_steps: int, s: float = 0.008, min_value: float = 0.001) -> torch.Tensor:
    """Fixed shape of the step sizes, δ_k = softplus(dt)·shape(k) (``dime.md`` §3.3).

    shape(k) = (1 − m)·cos²((π/2)·(c − t_k)/c) + m with t_k = (N − k)/N, c = 1 + s: large steps next to the
    prior (k = 0) and small ones at the action end (k = N − 1).
    """
    k = torch.arange(num_steps, dtype=torch.float64)
    t = (num_steps - k) / num_steps
    c = 1.0 + s
    shape = (1.0 - min_value) * torch.cos(0.5 * math.pi * (c - t) / c) ** 2 + min_value
    return shape.to(torch.float32)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Σ_d log N(x_d; mean_d, std_d²), written as the reference does: −½((x−μ)/σ)² − log σ − ½ log 2π."""
    z = (x - mean) / std
    return (-0.5 * z * z - torch.log(std) - _HALF_LOG_2PI).sum(-1)


def tanh_log_det(x: torch.Tensor) -> torch.Tensor:
    """Σ_d log(1 − tanh²(x_d)) in the overflow-free form 2·(log 2 − x − softplus(−2x))."""
    return (2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))).sum(-1)


def kernel_log_densities(
    trajectory: torch.Tensor, forward_means: torch.Tensor, eta: torch.Tensor, prior_var: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step log-densities of the generative and the reference kernel along sampled paths (§3.4).

    For EM step k, with η_k = δ_k·σ² (per dim) and τ_k = sqrt(2η_k):
      generative ("forward"): x_{k+1} ~ N(μF_k, τ_k²),  μF_k = x_k + η_k ⊙ (−x_k/σ₀² + f_θ(x_k, s, k))
      reference ("backward"): x_k ~ N(μB_k, τ_k²),      μB_k = x_{k+1} − η_k ⊙ x_{k+1}/σ₀²   (no network)
    The reference kernel reuses the generative step's η_k, as in the reference code.

    ``trajectory``: (N+1, B, A) latents x_0..x_N; ``forward_means``: (N, B, A) μF_k; ``eta``: (N, A).
    Returns (log F, log B), each (N, B), summed over the action dims.
    """
    tau = torch.sqrt(2.0 * eta).unsqueeze(1)
    current, following = trajectory[:-1], trajectory[1:]
    backward_means = following - eta.unsqueeze(1) * following / prior_var
    return (
        gaussian_log_density(following, forward_means, tau),
        gaussian_log_density(current, backward_means, tau),
    )


def entropy_bound_costs(
    trajectory: torch.Tensor, forward_means: torch.Tensor, eta: torch.Tensor, prior_std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DIME entropy bound as per-sample costs (``dime.md`` §0.4, §3.6). Returns (running, terminal).

    Entropy lower bound (Gibbs' inequality, the noising path p⃗ as auxiliary distribution):

        H(π_θ(·|s)) ≥ ℓ_θ(s) = E_{π_θ(a^{0:N}|s)}[ log p⃗(a^{1:N}|a⁰) − log π_θ(a^{0:N}|s) ]

    plus the tanh change of variables. Per sampled path x_0 → … → x_N (x_0 the prior draw, a = tanh(x_N)),
    with log F_k, log B_k from :func:`kernel_log_densities`:

        running  = −( Σ_k [log B_k − log F_k] + Σ_d log(1 − tanh²(x_N,d)) )
        terminal = log p₀(x_0),  p₀ = N(0, σ₀² I)

    running + terminal = log p₀(x_0) + Σ_k (log F_k − log B_k) − log|det J_tanh(x_N)| is an unbiased
    estimate of an upper bound on log π(a|s), so −(running + terminal) estimates ℓ_θ(s). It replaces log π in
    the critic target and the actor loss; α is tuned on the running part only (the terminal part does not
    depend on θ). Shapes as in :func:`kernel_log_densities`; outputs (B,).
    """
    log_forward, log_backward = kernel_log_densities(trajectory, forward_means, eta, prior_std**2)
    final, initial = trajectory[-1], trajectory[0].detach()  # the prior draw is sampled without gradient
    running = -((log_backward - log_forward).sum(0) + tanh_log_det(final))
    z = initial / prior_std
    terminal = (-0.5 * z * z).sum(-1) - initial.shape[-1] * (math.log(prior_std) + _HALF_LOG_2PI)
    return running, terminal


class ScoreNetwork(nn.Module):
    """f_θ(x, s, k) of the reference's PISGRADNet with ``use_target_score=False`` (``dime.md`` §3.5).

    emb = [sin(ω·k + φ), cos(ω·k + φ)] with ω = linspace(0.1, 100, 256) fixed and the phase φ trainable (init 0),
    k the raw step index; time coder Dense(512→256)→GELU→Dense(256→256); then on concat(x, s, h_t):
    ``num_layers`` × (Dense→GELU) and a Dense(→A) whose kernel is the constant 1e-8 (bias 0), clipped to ±1e4.
    GELU is the tanh approximation (flax's default).

    The first state-time layer acts on a concatenation, so it is split by input block: the observation and
    time-embedding parts are computed once per sampling call (:meth:`context`) and only the x part per step
    (:meth:`forward`). The weight is one flax-initialised (fan-in A+O+256) matrix, so this equals the reference's
    Dense on the concatenation up to float summation order.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: int = 256,
        num_layers: int = 3,
        num_frequencies: int = 256,
        output_clip: float = 1e4,
    ):
        super().__init__()
        self.act_dim, self.obs_dim, self.output_clip = act_dim, obs_dim, output_clip
        self.register_buffer("frequencies", torch.linspace(0.1, 100.0, num_frequencies))
        self.phase = nn.Parameter(torch.zeros(num_frequencies))
        self.time_coder = nn.Sequential(
            flax_linear(2 * num_frequencies, hidden), nn.GELU(approximate="tanh"), flax_linear(hidden, hidden)
        )
        self.input_layer = flax_linear(act_dim + obs_dim + hidden, hidden)
        layers: list[nn.Module] = [nn.GELU(approximate="tanh")]
        for _ in range(num_layers - 1):
            layers += [flax_linear(hidden, hidden), nn.GELU(approximate="tanh")]
        output = nn.Linear(hidden, act_dim)
        nn.init.constant_(output.weight, 1e-8)
        nn.init.zeros_(output.bias)
        layers.append(output)
        self.trunk = nn.Sequential(*layers)

    def context(self, obs: torch.Tensor, num_steps: int) -> torch.Tensor:
        """First-layer pre-activation without the x part, for every step: (N, B, H), bias included."""
        weight = self.input_layer.weight
        steps = torch.arange(num_steps, dtype=obs.dtype, device=obs.device).unsqueeze(-1)
        angle = steps * self.frequencies + self.phase
        time_code = self.time_coder(torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1))
        a, o = self.act_dim, self.obs_dim
        obs_part = F.linear(obs, weight[:, a : a + o], self.input_layer.bias)
        time_part = F.linear(time_code, weight[:, a + o :])
        return obs_part.unsqueeze(0) + time_part.unsqueeze(1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """f_θ for latents x (B, A) at one step, given that step's (B, H) slice of :meth:`context`."""
        h = torch.addmm(context, x, self.input_layer.weight[:, : self.act_dim].t())
        return self.trunk(h).clamp(-self.output_clip, self.output_clip)


class DiffusionPolicy(nn.Module):
    """The DIME actor: prior N(0, σ₀²I) → N EM steps with learned dt and friction → tanh (``dime.md`` §3).

    Parameters trained by the actor's Adam: the score network, ``log_dt`` (isp(dt), a scalar: δ_k =
    softplus(log_dt)·shape(k)) and ``friction`` (per action dim: σ² = 1/softplus(friction)). The reference's prior
    mean/std, betas and mass parameters never receive a gradient, so they are constants here.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        num_steps: int = 16,
        hidden: int = 256,
        num_layers: int = 3,
        init_dt: float = 0.1,
        init_friction: float = 1.0,
        prior_std: float = 2.5,
        schedule_s: float = 0.008,
        schedule_min: float = 0.001,
    ):
        super().__init__()
        self.num_steps, self.act_dim = num_steps, act_dim
        # The reference samples the prior with std softplus(isp(2.5)) but scores it with 2.5 (a rounding-level
        # mismatch, dime.md §9.12); one constant is used for both.
        self.prior_std = prior_std
        self.score = ScoreNetwork(obs_dim, act_dim, hidden, num_layers)
        self.log_dt = nn.Parameter(torch.full((1,), inverse_softplus(init_dt)))
        self.friction = nn.Parameter(torch.full((act_dim,), inverse_softplus(init_friction)))
        self.register_buffer("dt_shape", cosine_dt_shape(num_steps, schedule_s, schedule_min))

    def step_sizes(self) -> torch.Tensor:
        """η_k = δ_k·σ² for every step, (N, A)."""
        delta = F.softplus(self.log_dt) * self.dt_shape
        return delta.unsqueeze(-1) / F.softplus(self.friction)

    def forward(self, obs: torch.Tensor) -> PolicySample:
        """Sample a (B, A) batch of actions with fresh noise from the global torch RNG, and its costs.

        Euler–Maruyama with reparameterised noise: x_{k+1} = x_k + η_k ⊙ (−x_k/σ₀² + f_θ(x_k, s, k)) + τ_k ⊙ ε_k.
        The prior draw and all ε_k come from one (N+1, B, A) standard-normal draw (row 0 scaled by σ₀).
        """
        prior_var = self.prior_std**2
        noise = torch.randn(self.num_steps + 1, obs.shape[0], self.act_dim, dtype=obs.dtype, device=obs.device)
        eta = self.step_sizes()
        # unbind, not indexing: the backward of N index ops would materialise N full-size zero gradients.
        steps = zip(
            eta.unbind(0),
            torch.sqrt(2.0 * eta).unbind(0),
            self.score.context(obs, self.num_steps).unbind(0),
            noise[1:].unbind(0),
            strict=True,
        )
        x = noise[0] * self.prior_std
        trajectory, forward_means = [x], []
        for eta_k, tau_k, context_k, noise_k in steps:
            mean = x + eta_k * (self.score(x, context_k) - x / prior_var)
            x = mean + tau_k * noise_k
            forward_means.append(mean)
            trajectory.append(x)
        running, terminal = entropy_bound_costs(
            torch.stack(trajectory), torch.stack(forward_means), eta, self.prior_std
        )
        return PolicySample(torch.tanh(x), running, terminal)
