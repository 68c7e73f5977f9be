"""Shared pieces of the diffusion-policy baselines (QSM, Diffusion-QL, Consistency-AC, DIPO, QVPO, DACER).

Only what at least two of those methods use, or several of their official codes define alike, lives here
(``baselines.md`` §5–§10):

* β schedules: VP (Diffusion-QL, QSM, DACER), cosine (DIPO, QVPO; Nichol & Dhariwal 2021), linear;
* :class:`DiffusionSchedule`: DDPM forward noising q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (Ho et al. 2020,
  eq. 4) and the ancestral reverse sampler x_{t−1} = μ̃_t(x̂_0, x_t) + σ_t z with optional x̂_0 clipping, per-step
  sample clipping and a noise-ratio knob. Gradients flow through the sampler unless the caller disables them;
  Diffusion-QL and DACER back-propagate through the whole chain;
* the official codes' weight initialisers (:func:`xavier_linear` for QSM, :func:`dipo_linear` for DIPO and QVPO,
  :func:`haiku_linear` for DACER; Diffusion-QL and Consistency-AC keep PyTorch's default, as their codes do);
* sinusoidal (Vaswani et al. 2017; DACER's scaled variant) and learnable Fourier (QSM) time features, and the
  ε-network ε_θ(x_t, t, s): a Mish MLP on concat(x_t, time_mlp(emb(t)), s);
* :class:`TwinCritic`: the two Q-networks stacked into one batched MLP (``baselines.md`` §16.4);
* small helpers: candidate replication for best-of-N / softmax(Q) action selection, a sync-free categorical
  draw, Diffusion-QL's softmax(Q) selection and normalised Q loss;
* :class:`CACOnlineAgent`: the Consistency-AC repository's online agent and loop, which runs both Consistency-AC
  and its online Diffusion-QL; :class:`DIPOCodebaseAgent`: DIPO's networks and optimisers, which QVPO's code
  reuses.
"""

from __future__ import annotations

import abc
import copy
import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dime.agents import Agent, AgentConfig, at_least, check, nonempty_widths, positive, unit_interval
from dime.nn import EnsembleLinear, polyak_update
from dime.replay import Batch, ReplayBuffer
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


# ------------------------------------------------------------------------------------- initialisers


def xavier_linear(in_features: int, out_features: int) -> nn.Linear:
    """QSM (jaxrl5 ``default_init``): W ~ U(±√(6/(fan_in + fan_out))) (Glorot uniform), zero bias."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def dipo_linear(in_features: int, out_features: int) -> nn.Linear:
    """DIPO and QVPO (``agent/helpers.py: init_weights``): W ~ N(0, (1/(2√fan_in))²), zero bias.

    The official helper means to redraw values beyond ±2σ, but its redraw assigns a new local tensor, never the
    layer's weight, so the weights it leaves are the untruncated normal draw reproduced here.
    """
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, std=0.5 / math.sqrt(in_features))
    nn.init.zeros_(layer.bias)
    return layer


def haiku_linear(in_features: int, out_features: int) -> nn.Linear:
    """DACER (haiku ``hk.Linear`` default): W ~ N(0, 1/fan_in) truncated to ±2 standard deviations (not rescaled
    after truncation, unlike flax's lecun-normal), zero bias."""
    layer = nn.Linear(in_features, out_features)
    std = 1.0 / math.sqrt(in_features)
    nn.init.trunc_normal_(layer.weight, std=std, a=-2.0 * std, b=2.0 * std)
    nn.init.zeros_(layer.bias)
    return layer


# --------------------------------------------------------------------------------------- ε-network


class SinusoidalEmbedding(nn.Module):
    """[sin(t·f_k), cos(t·f_k)], k < d/2.

    Default (Diffusion-QL, DIPO, QVPO): f_k = 10000^(−k/(d/2 − 1)). ``scaled`` (DACER's
    ``scaled_sinusoidal_encoding``): f_k = 10000^(−k/(d/2)) and the features multiplied by 1/√d.
    """

    def __init__(self, dim: int, scaled: bool = False):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half if scaled else half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = 1.0 / math.sqrt(dim) if scaled else 1.0

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.unsqueeze(-1) * self.freqs
        features = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return features * self.scale if self.scale != 1.0 else features


class FourierFeatures(nn.Module):
    """QSM's learnable Fourier features [cos(2π t w), sin(2π t w)], w ~ N(0, 0.2²) of size d/2."""

    def __init__(self, dim: int):
        super().__init__()
        self.kernel = nn.Parameter(0.2 * torch.randn(dim // 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 2.0 * math.pi * t.unsqueeze(-1) * self.kernel
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


TIME_EMBEDDINGS: dict[str, Callable[[int], nn.Module]] = {
    "sinusoidal": SinusoidalEmbedding,
    "scaled_sinusoidal": functools.partial(SinusoidalEmbedding, scaled=True),
    "fourier": FourierFeatures,
}


class EpsilonMLP(nn.Module):
    """ε_θ(x_t, t, s) = trunk(concat(x_t, time_mlp(emb(t)), s)); Mish everywhere, linear output.

    time_mlp = Linear(time_dim → time_hidden) → Mish → Linear(time_hidden → time_out). The methods differ in
    widths (Diffusion-QL / Consistency-AC / DACER 16→32→16, DIPO / QVPO 32→256→32, QSM Fourier 64→128→128), in
    the time embedding (:data:`TIME_EMBEDDINGS`) and in the initialiser of every linear layer: ``linear`` builds
    them (:func:`xavier_linear`, :func:`dipo_linear`, :func:`haiku_linear`; ``nn.Linear`` keeps PyTorch's default,
    as the PyTorch codes of Diffusion-QL and Consistency-AC do).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: tuple[int, ...],
        time_dim: int = 16,
        time_hidden: int = 32,
        time_out: int = 16,
        embedding: str = "sinusoidal",
        linear: Callable[[int, int], nn.Linear] = nn.Linear,
    ):
        super().__init__()
        self.time_mlp = nn.Sequential(
            TIME_EMBEDDINGS[embedding](time_dim),
            linear(time_dim, time_hidden),
            nn.Mish(),
            linear(time_hidden, time_out),
        )
        layers: list[nn.Module] = []
        width = act_dim + time_out + obs_dim
        for h in hidden:
            layers += [linear(width, h), nn.Mish()]
            width = h
        layers.append(linear(width, act_dim))
        self.trunk = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """``t`` is (N,) or (1,); a (1,) time is embedded once and broadcast to the N rows."""
        return self.trunk(torch.cat([x, self.time_mlp(t).expand(x.shape[0], -1), obs], dim=-1))


# ------------------------------------------------------------------------------------------- critics


class TwinCritic(nn.Module):
    """Two Q(s, a) MLPs in one batched pass (EnsembleLinear); returns (2, B) or (2, B, out) for out > 1. Each
    member's layers are initialised like ``linear`` initialises an ``nn.Linear`` (see :class:`EpsilonMLP`)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: tuple[int, ...],
        activation: Callable[[torch.Tensor], torch.Tensor] = F.mish,
        out_features: int = 1,
        linear: Callable[[int, int], nn.Linear] = nn.Linear,
    ):
        super().__init__()
        widths = [obs_dim + act_dim, *hidden, out_features]
        self.layers = nn.ModuleList(EnsembleLinear(2, a, b, init=linear) for a, b in itertools.pairwise(widths))
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
    """Checkpoint of the named attributes: modules and optimisers by ``state_dict``, tensors and dicts of tensors
    cloned, host counters (ints/floats) as they are."""
    state: dict[str, Any] = {}
    for name in names:
        value = getattr(agent, name)
        if isinstance(value, nn.Module | torch.optim.Optimizer):
            state[name] = value.state_dict()
        elif isinstance(value, torch.Tensor):
            state[name] = value.detach().clone()
        elif isinstance(value, dict):  # metrics kept between updates
            state[name] = {key: tensor.detach().clone() for key, tensor in value.items()}
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


# ------------------------------------------------------------------------ action selection and actor losses


def softmax_q_select(
    sample_fn: Callable[[torch.Tensor], torch.Tensor],
    critic: TwinCritic,
    obs: torch.Tensor,
    act_dim: int,
    num_candidates: int,
) -> torch.Tensor:
    """Draw ``num_candidates`` actions per state and pick one with probability softmax(min_j Q_j) per state
    (Diffusion-QL's and Consistency-AC's ``sample_action``)."""
    obs_rep = repeat_obs(obs, num_candidates)
    candidates = sample_fn(obs_rep)
    q = critic.q_min(obs_rep, candidates).view(obs.shape[0], num_candidates)
    return gather_candidates(candidates.view(obs.shape[0], num_candidates, act_dim), gumbel_max(q))


def normalised_q_loss(q: torch.Tensor) -> torch.Tensor:
    """−mean Q_i / |Q_j|.mean().detach() with a fair coin choosing i ∈ {1, 2} (Diffusion-QL's L_q); branch-free."""
    coin = (torch.rand((), device=q.device) < 0.5).to(q.dtype)
    numerator = coin * q[0] + (1.0 - coin) * q[1]
    denominator = coin * q[1] + (1.0 - coin) * q[0]
    return -numerator.mean() / denominator.abs().mean().detach()


# -------------------------------------------------------- the online agent of the Consistency-AC code base


@dataclass
class CACOnlineConfig(AgentConfig):
    """The online loop of the Consistency-AC repository (``online.py`` as its README runs it, ``--num_envs 3``) and
    its ``agents/online_agent.py``, translated to one env with the same number of updates per env step.

    ``train_every``: env steps per update (official: one update every 4 steps of 3 vector envs = 12 env steps).
    ``epsilon_*``: ε-greedy exploration, ε linear from ``epsilon_start`` to ``epsilon_end`` over
    ``epsilon_decay_steps`` env steps (official: 10% of the default 1M vector steps, i.e. 1e5 vector steps = 3e5 env
    steps at 3 envs), then constant. ``learning_starts`` 0: the official loop has no uniform warm-up; ε ≈ 1 makes
    its first steps random. ``buffer_size`` 1e5 and ``actor_lr`` 1e-5 (every row of ``online.py``'s table), critic
    lr 3e-4 (hard-coded in the agent).
    """

    learning_starts: int = 0
    buffer_size: int = 100_000
    eval_deterministic: bool = True  # no ε-greedy; softmax(Q) over the candidates
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    actor_lr: float = 1e-5
    critic_lr: float = 3e-4
    grad_norm: float = 1.0  # <= 0 disables clipping
    tau: float = 0.005
    ema_decay: float = 0.995
    ema_every: int = 5
    ema_start: int = 1000
    num_candidates: int = 50
    train_every: int = 12
    epsilon_start: float = 1.0
    epsilon_end: float = 0.01
    epsilon_decay_steps: int = 300_000

    def validate(self) -> None:
        super().validate()
        nonempty_widths(self, "actor_hidden", "critic_hidden")
        positive(self, "actor_lr", "critic_lr")
        unit_interval(self, "tau", "ema_decay", "epsilon_start", "epsilon_end")
        at_least(self, 1, "ema_every", "num_candidates", "train_every")
        at_least(self, 0, "ema_start", "epsilon_decay_steps")


class CACOnlineAgent(Agent):
    """Consistency-AC's ``OnlineAgent``: one class for its consistency and its diffusion (Diffusion-QL) actor.

    Per update (``agents/online_agent.py: train``): a twin-critic TD step towards
    y = r + γ(1 − terminated) min_j Q̄_j(s', a'), a' from the EMA actor (decay 0.995, every ``ema_every`` updates
    once ``ema_start`` updates are done; before that it stays at the initial actor); then an actor step on the
    same minibatch (:meth:`actor_loss`, by default −Q_i(s, a_θ)/|Q_j(s, a_θ)| with no BC term); global-norm
    clipping of both. Acting: softmax(min_j Q̄_j) over ``num_candidates`` policy samples (target critics), with
    ε-greedy uniform actions while training. ``update`` trains on every ``train_every``-th env step only and returns
    the last update's metrics in between.

    Subclasses build the actor (:meth:`build_actor`) and say how it samples (:meth:`sample`).
    """

    compiled_methods = ("act", "_critic_step", "_actor_step", "_ema_step")
    config: CACOnlineConfig
    _STATE = (
        "actor",
        "actor_ema",
        "critic",
        "critic_target",
        "actor_optimizer",
        "critic_optimizer",
        "gradient_steps",
        "env_step",
        "last_metrics",
    )

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: CACOnlineConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        c = config
        self.actor = self.build_actor().to(device)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinCritic(obs_dim, act_dim, c.critic_hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, fused=True)
        self.gradient_steps = 0
        self.last_metrics: dict[str, torch.Tensor] = {}
        self._epsilon = torch.tensor(c.epsilon_start, device=device)
        self.env_step = 0  # last env step seen by ``update``; drives the ε schedule of ``act``

    @abc.abstractmethod
    def build_actor(self) -> nn.Module:
        """The policy network (its parameters are the actor optimiser's)."""

    @abc.abstractmethod
    def sample(self, obs: torch.Tensor, actor: nn.Module | None = None) -> torch.Tensor:
        """One policy sample per row of ``obs`` from ``actor`` (default: the online actor), gradients kept."""

    @property
    def env_step(self) -> int:
        return self._env_step

    @env_step.setter
    def env_step(self, value: int) -> None:
        """Also refills the device scalar ε that ``act`` reads: a Python float read by the compiled ``act`` would
        be a constant of its graph, recompiled at every new value."""
        self._env_step = value
        self._epsilon.fill_(self.epsilon())

    def epsilon(self) -> float:
        """``online.py``'s ``linear_schedule``: max(start + (end − start)·t/T, end), t the env step."""
        c = self.config
        fraction = min(self.env_step / max(c.epsilon_decay_steps, 1), 1.0)
        return c.epsilon_start + fraction * (c.epsilon_end - c.epsilon_start)

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        actions = softmax_q_select(self.sample, self.critic_target, obs, self.act_dim, self.config.num_candidates)
        if deterministic:
            return actions
        explore = torch.rand(obs.shape[0], 1, device=obs.device) < self._epsilon
        return torch.where(explore, torch.rand_like(actions) * 2.0 - 1.0, actions)

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Host schedule: on every ``train_every``-th env step a critic step, an actor step and, every ``ema_every``
        updates from ``ema_start`` on, the EMA actor's step; on every env step ``act``'s ε moves to its value."""
        c = self.config
        self.env_step = env_step
        if env_step % c.train_every:
            return self.last_metrics
        batch = buffer.sample(c.batch_size)
        metrics = self._critic_step(batch)
        metrics.update(self._actor_step(batch.obs, batch.actions))
        if self.gradient_steps % c.ema_every == 0 and self.gradient_steps >= c.ema_start:
            self._ema_step()
        self.gradient_steps += 1
        self.last_metrics = metrics
        return metrics

    def actor_loss(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """``actor_loss`` (what the actor minimises) and its parts. Here L = −Q_i(s, a_θ)/|Q_j(s, a_θ)|.detach()
        (:func:`normalised_q_loss`) with a_θ a fresh policy sample; the critic's parameters get no gradient."""
        self.critic.requires_grad_(False)
        q_loss = normalised_q_loss(self.critic(obs, self.sample(obs)))
        self.critic.requires_grad_(True)
        return {"actor_loss": q_loss}

    def _critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Twin-critic TD step at an EMA-actor sample."""
        c = self.config
        with torch.no_grad():
            next_actions = self.sample(batch.next_obs, self.actor_ema)
        return twin_critic_step(
            self.critic, self.critic_target, self.critic_optimizer, batch, next_actions, c.gamma, c.tau, c.grad_norm
        )

    def _actor_step(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        losses = self.actor_loss(obs, actions)
        self.actor_optimizer.zero_grad(set_to_none=True)
        losses["actor_loss"].backward()
        if c.grad_norm > 0:
            nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_norm)
        self.actor_optimizer.step()
        return {name: loss.detach() for name, loss in losses.items()}

    def _ema_step(self) -> None:
        polyak_update(self.actor_ema, self.actor, 1.0 - self.config.ema_decay)

    def state_dict(self) -> dict[str, Any]:
        return agent_state(self, self._STATE)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_agent_state(self, state, self._STATE)


# ------------------------------------------------------------------ the networks of the DIPO code base


@dataclass
class DIPOCodebaseConfig(AgentConfig):
    """Networks and optimisation of DIPO's code (``agent/model.py``, ``agent/DiPo.py``, ``main.py``), which
    QVPO's code reuses: an ε-network with ``time_dim``-d sinusoidal time features (time MLP ``time_dim`` →
    ``time_hidden`` → ``time_dim``) and a Mish trunk, twin Mish critics, both initialised by ``init_weights``
    (:func:`dipo_linear`); Adam with ε = ``adam_eps`` for both, global grad-norm clip ``grad_norm`` (0: none), Polyak
    targets for the critics (every update) and for the actor (every ``actor_target_every`` updates); 10k uniform
    warm-up steps."""

    learning_starts: int = 10_000
    eval_deterministic: bool = True
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    time_dim: int = 32
    time_hidden: int = 256
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    diffusion_steps: int = 100
    beta_schedule: str = "cosine"
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    adam_eps: float = 1e-5
    grad_norm: float = 2.0
    tau: float = 0.005
    actor_target_every: int = 1
    noise_ratio: float = 1.0

    def validate(self) -> None:
        super().validate()
        nonempty_widths(self, "actor_hidden", "critic_hidden")
        check(self, "time_dim", self.time_dim >= 4 and self.time_dim % 2 == 0, "an even number >= 4")
        at_least(self, 1, "time_hidden", "diffusion_steps", "actor_target_every")
        check(self, "beta_schedule", self.beta_schedule in BETA_SCHEDULES, f"one of {', '.join(BETA_SCHEDULES)}")
        positive(self, "actor_lr", "critic_lr", "adam_eps")
        at_least(self, 0, "grad_norm", "noise_ratio")
        unit_interval(self, "tau")


class DIPOCodebaseAgent(Agent):
    """The networks, optimisers and target updates that DIPO and QVPO share (see :class:`DIPOCodebaseConfig`);
    subclasses add the update rule."""

    config: DIPOCodebaseConfig
    _STATE = (
        "actor",
        "actor_target",
        "critic",
        "critic_target",
        "actor_optimizer",
        "critic_optimizer",
        "gradient_steps",
    )

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: DIPOCodebaseConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        c = config
        self.actor = EpsilonMLP(
            obs_dim, act_dim, c.actor_hidden, c.time_dim, c.time_hidden, c.time_dim, linear=dipo_linear
        ).to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinCritic(obs_dim, act_dim, c.critic_hidden, linear=dipo_linear).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.schedule = DiffusionSchedule.make(c.beta_schedule, c.diffusion_steps).to(device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, eps=c.adam_eps, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, eps=c.adam_eps, fused=True)
        self.gradient_steps = 0

    def critic_step(self, batch: Batch, next_actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Twin-critic TD step towards the targets at ``next_actions``, clipped to ``grad_norm``."""
        c = self.config
        return twin_critic_step(
            self.critic, self.critic_target, self.critic_optimizer, batch, next_actions, c.gamma, c.tau, c.grad_norm
        )

    def actor_optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward pass of ``loss``, global-norm clip, Adam step of the actor."""
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_norm > 0:
            nn.utils.clip_grad_norm_(self.actor.parameters(), self.config.grad_norm)
        self.actor_optimizer.step()

    def finish_update(self) -> None:
        """The host part of every update's end: the actor target's Polyak step on every ``actor_target_every``-th
        update (``self.step % update_actor_target_every == 0`` in the official code), then the update count."""
        if self.gradient_steps % self.config.actor_target_every == 0:
            self._actor_target_step()
        self.gradient_steps += 1

    def _actor_target_step(self) -> None:
        polyak_update(self.actor_target, self.actor, self.config.tau)

    def state_dict(self) -> dict[str, Any]:
        return agent_state(self, self._STATE)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_agent_state(self, state, self._STATE)
