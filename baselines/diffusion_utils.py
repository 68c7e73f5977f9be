"""Shared pieces of the diffusion-policy baselines (QSM, Diffusion-QL, Consistency-AC, DIPO, QVPO, DACER).

Only what at least two of those methods use lives here (``baselines.md`` §5–§10):

* β schedules: VP (Diffusion-QL, QSM, DACER), cosine (DIPO, QVPO; Nichol & Dhariwal 2021), linear;
* :class:`DiffusionSchedule`: DDPM forward noising q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (Ho et al. 2020,
  eq. 4) and the ancestral reverse sampler x_{t−1} = μ̃_t(x̂_0, x_t) + σ_t z with optional x̂_0 clipping, per-step
  sample clipping and a noise-ratio knob. Gradients flow through the sampler unless the caller disables them;
  Diffusion-QL and DACER back-propagate through the whole chain;
* sinusoidal (Vaswani et al. 2017) and learnable Fourier (QSM) time features, and the ε-network
  ε_θ(x_t, t, s): a Mish MLP on concat(x_t, time_mlp(emb(t)), s);
* :class:`TwinCritic`: the two Q-networks stacked into one batched MLP (``baselines.md`` §16.4);
* small helpers: candidate replication for best-of-N / softmax(Q) action selection and a sync-free categorical
  draw.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dime.nn import EnsembleLinear, polyak_update
from dime.replay import Batch
from dime.tasks import TaskSpec

#: ε-network signature used by the samplers: (x_t (N, A), t (N,) or (1,) float, obs (N, O)) -> (N, A).
EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------- β schedules


def vp_beta_schedule(num_steps: int) -> torch.Tensor:
    """Discretised VP-SDE schedule: β_t = 1 − exp(−b_min/T − ½(b_max − b_min)(2t − 1)/T²), b ∈ [0.1, 10]."""
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    b_min, b_max = 0.1, 10.0
    alpha = torch.exp(-b_min / num_steps - 0.5 * (b_max - b_min) * (2 * t - 1) / num_steps**2)
    return (1.0 - alpha).float()


def cosine_beta_schedule(num_steps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021) eq. 17: ᾱ(t) = cos²(((t/T) + s)/(1 + s)·π/2), β_t = 1 − ᾱ_t/ᾱ_{t−1} ≤ 0.999."""
    t = torch.linspace(0, num_steps, num_steps + 1, dtype=torch.float64) / num_steps
    alphas_cumprod = torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0.0, 0.999).float()


def linear_beta_schedule(num_steps: int, start: float = 1e-4, end: float = 2e-2) -> torch.Tensor:
    """Ho et al. (2020): β linear from 1e-4 to 2e-2."""
    return torch.linspace(start, end, num_steps, dtype=torch.float64).float()


BETA_SCHEDULES: dict[str, Callable[[int], torch.Tensor]] = {
    "vp": vp_beta_schedule,
    "cosine": cosine_beta_schedule,
    "linear": linear_beta_schedule,
}


class DiffusionSchedule(nn.Module):
    """DDPM coefficients for one β schedule, stored as buffers so they follow ``.to(device)``."""

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        betas = betas.double()
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        posterior_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        coefficients = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": abar,
            "sqrt_abar": abar.sqrt(),
            "sqrt_one_minus_abar": (1.0 - abar).sqrt(),
            "sqrt_recip_abar": (1.0 / abar).sqrt(),
            "sqrt_recipm1_abar": (1.0 / abar - 1.0).sqrt(),
            # x̂_0 form of the posterior mean (Ho et al. eq. 7) and its ε form used by QSM's sampler
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
            "eps_coef": betas / (1.0 - abar).sqrt(),
            "posterior_std": posterior_var.clamp(min=1e-20).sqrt(),
            "beta_std": betas.sqrt(),
        }
        for name, value in coefficients.items():
            self.register_buffer(name, value.float(), persistent=False)
        self.num_steps = len(betas)

    @classmethod
    def make(cls, name: str, num_steps: int) -> DiffusionSchedule:
        return cls(BETA_SCHEDULES[name](num_steps))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε for integer steps t (N,) in [0, T)."""
        return self.sqrt_abar[t].unsqueeze(-1) * x0 + self.sqrt_one_minus_abar[t].unsqueeze(-1) * noise

    def epsilon_loss(
        self, eps_fn: EpsFn, x0: torch.Tensor, obs: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Ho et al. eq. 14, E_{t,ε} w·‖ε − ε_θ(x_t, t, s)‖² (mean over batch and action dims), t ~ U{0..T−1}."""
        t = torch.randint(0, self.num_steps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        error = (eps_fn(self.q_sample(x0, t, noise), t.float(), obs) - noise).pow(2)
        if weights is not None:
            error = error * weights.unsqueeze(-1)
        return error.mean()

    def sample(
        self,
        eps_fn: EpsFn,
        obs: torch.Tensor,
        act_dim: int,
        *,
        clip_x0: bool = True,
        clip_sample: bool = False,
        noise_ratio: float = 1.0,
        variance: str = "posterior",
    ) -> torch.Tensor:
        """Ancestral DDPM sampling x_T ~ N(0, I) → x_0, clipped to [−1, 1] at the end.

        ``clip_x0``: predict x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t, clip it to [−1, 1] and use the posterior mean
        μ̃_t(x̂_0, x_t) (Diffusion-QL, DIPO, QVPO, DACER). Without it the mean is the ε form
        (x_t − β_t/√(1 − ᾱ_t) ε̂)/√α_t (identical when nothing is clipped). ``clip_sample``: clip x_{t−1} to
        [−1, 1] after every step (QSM). ``variance``: σ_t² = β̃_t (posterior) or β_t. ``noise_ratio`` scales the
        per-step noise (DIPO evaluates with 0); x_T is always random. No noise is added at the last step.
        """
        x = torch.randn(obs.shape[0], act_dim, device=obs.device)
        std = self.posterior_std if variance == "posterior" else self.beta_std
        for i in reversed(range(self.num_steps)):
            t = torch.full((1,), float(i), device=obs.device)  # one step for all rows: time features once
            eps = eps_fn(x, t, obs)
            if clip_x0:
                x0 = (self.sqrt_recip_abar[i] * x - self.sqrt_recipm1_abar[i] * eps).clamp(-1.0, 1.0)
                mean = self.posterior_mean_coef1[i] * x0 + self.posterior_mean_coef2[i] * x
            else:
                mean = (x - self.eps_coef[i] * eps) / self.alphas[i].sqrt()
            x = mean + noise_ratio * std[i] * torch.randn_like(x) if i > 0 else mean
            if clip_sample:
                x = x.clamp(-1.0, 1.0)
        return x.clamp(-1.0, 1.0)


# --------------------------------------------------------------------------------------- ε-network


class SinusoidalEmbedding(nn.Module):
    """[sin(t·f_k), cos(t·f_k)] with f_k = 10000^(−k/(d/2 − 1)), k < d/2 (Diffusion-QL, DIPO, QVPO, DACER)."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.unsqueeze(-1) * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FourierFeatures(nn.Module):
    """QSM's learnable Fourier features [cos(2π t w), sin(2π t w)], w ~ N(0, 0.2²) of size d/2."""

    def __init__(self, dim: int):
        super().__init__()
        self.kernel = nn.Parameter(0.2 * torch.randn(dim // 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 2.0 * math.pi * t.unsqueeze(-1) * self.kernel
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


class EpsilonMLP(nn.Module):
    """ε_θ(x_t, t, s) = trunk(concat(x_t, time_mlp(emb(t)), s)); Mish everywhere, linear output.

    time_mlp = Linear(time_dim → time_hidden) → Mish → Linear(time_hidden → time_out). The methods differ only
    in widths: Diffusion-QL / Consistency-AC / DACER 16→32→16, DIPO / QVPO 32→256→32, QSM Fourier 64→128→128.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: tuple[int, ...],
        time_dim: int = 16,
        time_hidden: int = 32,
        time_out: int = 16,
        fourier: bool = False,
    ):
        super().__init__()
        embedding = FourierFeatures(time_dim) if fourier else SinusoidalEmbedding(time_dim)
        self.time_mlp = nn.Sequential(
            embedding, nn.Linear(time_dim, time_hidden), nn.Mish(), nn.Linear(time_hidden, time_out)
        )
        layers: list[nn.Module] = []
        width = act_dim + time_out + obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Mish()]
            width = h
        layers.append(nn.Linear(width, act_dim))
        self.trunk = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """``t`` is (N,) or (1,); a (1,) time is embedded once and broadcast to the N rows."""
        return self.trunk(torch.cat([x, self.time_mlp(t).expand(x.shape[0], -1), obs], dim=-1))


# ------------------------------------------------------------------------------------------- critics


class TwinCritic(nn.Module):
    """Two Q(s, a) MLPs in one batched pass (EnsembleLinear); returns (2, B) or (2, B, out) for out > 1."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: tuple[int, ...],
        activation: Callable[[torch.Tensor], torch.Tensor] = F.mish,
        out_features: int = 1,
    ):
        super().__init__()
        widths = [obs_dim + act_dim, *hidden, out_features]
        self.layers = nn.ModuleList(EnsembleLinear(2, a, b) for a, b in itertools.pairwise(widths))
        self.activation = activation
        self.out_features = out_features

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1)
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        x = self.layers[-1](x)
        return x.squeeze(-1) if self.out_features == 1 else x

    def q_min(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self(obs, actions).min(0).values


def twin_mse(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ_j mean_b (Q_j − y)², the twin-critic TD loss of TD3/Diffusion-QL/DIPO."""
    return (q - target).pow(2).mean(-1).sum()


def twin_critic_step(
    critic: TwinCritic,
    critic_target: TwinCritic,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    next_actions: torch.Tensor,
    gamma: float,
    tau: float,
    grad_norm: float = 0.0,
) -> dict[str, torch.Tensor]:
    """One TD step of the twin critics towards y = r + γ(1 − terminated)·min_j Q̄_j(s', a'), with a' chosen by the
    algorithm, an optional global-norm clip (``grad_norm`` <= 0: none), then the Polyak step of the targets.

    The diffusion baselines' actor losses read the online critics only, so Polyak-averaging here rather than after
    the actor step (as some references order it) gives the same numbers.
    """
    with torch.no_grad():
        next_q = critic_target(batch.next_obs, next_actions).min(0).values
        target = batch.rewards + gamma * (1.0 - batch.terminated) * next_q
    q = critic(batch.obs, batch.actions)
    loss = twin_mse(q, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_norm > 0:
        nn.utils.clip_grad_norm_(critic.parameters(), grad_norm)
    optimizer.step()
    polyak_update(critic_target, critic, tau)
    return {"critic_loss": loss.detach(), "q_mean": q.detach().mean()}


# ------------------------------------------------------------------------------------------- helpers


def repeat_obs(obs: torch.Tensor, n: int) -> torch.Tensor:
    """(B, O) -> (B·n, O) with each state repeated n times in a row (candidate k of state b is row b·n + k)."""
    return obs.repeat_interleave(n, dim=0)


def gumbel_max(logits: torch.Tensor) -> torch.Tensor:
    """Index drawn from softmax(logits) along the last dim via argmax(logits + Gumbel); no host sync."""
    u = torch.rand_like(logits).clamp_(min=1e-20, max=1.0 - 1e-7)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


def gather_candidates(candidates: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """candidates (B, K, A), index (B,) -> (B, A)."""
    return candidates.gather(1, index.view(-1, 1, 1).expand(-1, 1, candidates.shape[-1])).squeeze(1)


def is_humanoid_class(task: TaskSpec) -> bool:
    """Humanoid / dog tasks, where wider networks are recommended (DACER issue #9: 512 units on Humanoid)."""
    name = task.name.lower()
    return "humanoid" in name or "/dog-" in name


def agent_state(agent: object, names: tuple[str, ...]) -> dict[str, Any]:
    """Checkpoint of the named attributes: modules and optimisers by ``state_dict``, tensors cloned, host
    counters (ints/floats) as they are."""
    state: dict[str, Any] = {}
    for name in names:
        value = getattr(agent, name)
        if isinstance(value, nn.Module | torch.optim.Optimizer):
            state[name] = value.state_dict()
        elif isinstance(value, torch.Tensor):
            state[name] = value.detach().clone()
        else:
            state[name] = value
    return state


def load_agent_state(agent: object, state: dict[str, Any], names: tuple[str, ...]) -> None:
    """Inverse of :func:`agent_state`; tensors are copied in place so optimisers keep pointing at them."""
    for name in names:
        value = getattr(agent, name)
        if isinstance(value, nn.Module | torch.optim.Optimizer):
            value.load_state_dict(state[name])
        elif isinstance(value, torch.Tensor):
            with torch.no_grad():
                value.copy_(state[name])
        else:
            setattr(agent, name, state[name])
