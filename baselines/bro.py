"""BRO — Bigger, Regularized, Optimistic (Nauman et al., NeurIPS 2024) and its "BRO (Fast)" preset.

A SAC-style agent with large LayerNorm-residual critics, quantile regression, periodic full resets and an
optimistic exploration policy (``baselines.md`` §4; facts read in ``naumix/BiggerRegularizedOptimistic``
5870a13d, ``jaxrl/bro``):

* **BroNet**: Dense → LN → ReLU, then ``depth`` residual blocks x ← x + LN(Dense(ReLU(LN(Dense(x))))), then a
  Dense head; orthogonal init with gain √2, zero biases, LayerNorm ε = 1e-6 (flax). Critic width 512, depth 2;
  actors width 256, depth 1.
* **Quantile critics**: two critics with N = 100 quantiles at τ_i = (2i − 1)/(2N), trained with the
  quantile-Huber loss (κ = 1), summed over the two critics:
  L = Σ_c mean_{b,j} Σ_i |τ_i − 1{δ_bij < 0}| · H_κ(δ_bij)/κ,  δ_bij = y_bj − θ^c_bi,
  y_bj = r_b + γ (1 − terminated_b) [q̄_bj − α log π(a'_b|s'_b)],  a' ~ π(·|s'),
  q̄ = ½(θ̄¹ + θ̄²) − pessimism · ½|θ̄¹ − θ̄²| from Polyak targets (τ = 0.005); pessimism 0 is the plain mean.
* **Actor**: tanh-Gaussian, log σ squashed into [−10, 2] (mean head gain √2, log σ head gain 1);
  L_π = mean_b [α log π(a|s) − mean_i q̄_i(s, a)] with the online critics.
  Temperature: L_α = α · (H̄ − H̄_target), H̄ = −mean log π, H̄_target = −|A|/2, α₀ = 1, Adam(3e-4, β₁ 0.5);
  ``--set alpha=…`` fixes α instead (``alpha=0``: no entropy term).
* **Optimistic exploration actor**: a BroNet on (s, μ(s)) emits a mean shift (bias-free head, orthogonal init with
  gain 0.01); the exploration policy is tanh(N(μ + shift, (0.75 σ)²)), with μ, σ from the (just updated) main
  actor. It maximises an upper bound, with KL weight λ:
  L_o = −mean_b mean_i [½(θ¹ + θ²) + β_opt · ½|θ¹ − θ²|] + λ · mean_b KL(N(μ_o, σ_o/0.75) ‖ N(μ, σ)).
  The KL compares the mean shift only (σ_o/0.75 = σ), exactly as the reference writes it.
  Dual descent on the per-dimension KL k̄ = KL/|A| against the target 0.05:
  L_β = (β_opt − pessimism)(k̄ − 0.05),  L_λ = −λ (k̄ − 0.05), both Adam(3e-5, β₁ 0.5) on a raw parameter p with
  value exp(−10 + 17.5 · ½(1 + tanh p)); β_opt₀ = 1, λ₀ = 0.25. KL above target → λ grows and β_opt shrinks.
  Exploration samples the optimistic policy; evaluation uses tanh(μ) of the main actor (temperature 0).
* Per gradient step, in the reference's order: critic, Polyak target, actor, optimistic actor (with the updated
  actor), then α, β_opt and λ from the pre-update entropy and KL. UTD 10, batch 128 (a fresh minibatch per
  gradient step), AdamW (lr 3e-4, weight decay 1e-4) for critic, actor and optimistic actor, learning_starts 2500,
  γ = 0.99.
* **Resets**: every network, α, β_opt, λ and every optimiser state go back to their initial values after
  15k, 50k, 250k, 500k, 750k, 1M, 1.5M and 2M env steps (``reset_steps``); the replay buffer is kept. As in the
  reference, which re-runs its seeded initialiser, the networks return to the *same* initial weights.
* **BRO (Fast)** (:class:`BROFast`) is this class with UTD 2; the reference then keeps only the first reset.

Deviations from the official code (``naumix/BiggerRegularizedOptimistic`` at ``5870a13``):

+------------------------------------------+----------------------------------------+----------------------------------+
| What differs from the official code      | Why                                    | Expected effect                  |
+==========================================+========================================+==================================+
| One seed per process; the reference      | Independent processes are equivalent   | None (a higher total cost).      |
| vmaps 10 seeds over one set of jitted    | per seed and fit the study's           |                                  |
| updates.                                 | job-per-run workflow.                  |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Evaluation: 5 deterministic episodes     | One protocol for all methods.          | None.                            |
| (tanh of the mean, the reference's count |                                        |                                  |
| and rule) at the study's cadence instead |                                        |                                  |
| of every 25k steps.                      |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| MyoSuite: episodes last the registry     | The study's MyoSuite protocol is       | Could change the MyoSuite scores |
| horizon (50-200 steps) and the study     | DIME's; the trainer logs both success  | (horizon and success             |
| scores final-step ``solved``; the        | flavours (``success_final``,           | definition).                     |
| reference cuts every MyoSuite episode at | ``success_any``), so BRO's own metric  |                                  |
| 100 steps, scores ``solved`` at any step | stays available.                       |                                  |
| and ignores per-env seeds.               |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Gym (which the reference cannot run:     | One env factory for the suite.         | None on DMC.                     |
| ``jaxrl.envs.openai_gym`` is missing)    |                                        |                                  |
| and DMC through ``dime.tasks.make_env``; |                                        |                                  |
| no action repeat on DMC, as in the       |                                        |                                  |
| reference. Time limits bootstrap in      |                                        |                                  |
| both.                                    |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Resets fire before the update of the     | The reference would silently miss a    | None.                            |
| first env step after each scheduled      | skipped reset; the RNG stream is not   |                                  |
| count (the reference's                   | part of the algorithm.                 |                                  |
| ``env_step in [15001, 50001, …]``), also |                                        |                                  |
| when a scheduled step was skipped (e.g.  |                                        |                                  |
| ``learning_starts`` beyond it); the      |                                        |                                  |
| reference's reset also re-seeds its      |                                        |                                  |
| sampling PRNG, this one restores the     |                                        |                                  |
| initial weights only.                    |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| One batch·UTD draw sliced per gradient   | The same distribution (uniform with    | None.                            |
| step; the reference samples a (UTD,      | replacement), one sampler call.        |                                  |
| batch) array per env step.               |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| The α, β_opt and λ losses are            | They share no parameters (the values   | None.                            |
| backpropagated together with the         | entering each other's losses are       |                                  |
| optimistic actor's loss in one backward  | detached): the reference's gradients,  |                                  |
| pass.                                    | one pass.                              |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.common import tanh_gaussian_sample
from dime.agents import Agent, AgentConfig, at_least, check, positive, unit_interval
from dime.nn import EnsembleLinear, log_temperature, polyak_update
from dime.replay import ReplayBuffer
from dime.tasks import TaskSpec

#: The reference's schedule of full resets (env steps); BRO (Fast) keeps only the first.
BRO_RESET_STEPS = (15_000, 50_000, 250_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000)
# Range of log β_opt and log λ (``Adjustment`` in the reference): value = exp(lo + (hi − lo)·½(1 + tanh p)).
_DUAL_LOG_MIN, _DUAL_LOG_MAX = -10.0, 7.5
_LAYER_NORM_EPS = 1e-6  # flax.linen.LayerNorm default


@dataclass
class BROConfig(AgentConfig):
    learning_starts: int = 2500
    batch_size: int = 128
    utd: int = 10
    reset_steps: tuple[int, ...] = BRO_RESET_STEPS
    critic_width: int = 512
    critic_depth: int = 2
    actor_width: int = 256
    actor_depth: int = 1
    n_quantiles: int = 100
    kappa: float = 1.0
    pessimism: float = 0.0  # 0: mean of the two critics; 1: the usual min
    tau: float = 0.005
    lr: float = 3e-4  # critic, actor and optimistic actor (AdamW)
    weight_decay: float = 1e-4  # optax.adamw default
    alpha_lr: float = 3e-4
    alpha: float | None = None  # a fixed temperature; None tunes it from init_alpha towards the target entropy
    init_alpha: float = 1.0
    target_entropy: float | None = None  # None: −|A|/2
    dual_lr: float = 3e-5  # β_opt and λ
    adam_b1_scalars: float = 0.5  # β₁ of the α, β_opt and λ optimisers
    init_optimism: float = 1.0
    init_kl_weight: float = 0.25
    kl_target: float = 0.05  # per action dimension
    std_multiplier: float = 0.75
    shift_init_scale: float = 0.01
    log_std_min: float = -10.0
    log_std_max: float = 2.0

    def validate(self) -> None:
        super().validate()
        at_least(self, 1, "utd", "critic_width", "actor_width", "n_quantiles")
        at_least(self, 0, "critic_depth", "actor_depth", "pessimism", "weight_decay", "alpha", "shift_init_scale")
        check(
            self,
            "reset_steps",
            all(s >= 0 for s in self.reset_steps) and list(self.reset_steps) == sorted(self.reset_steps),
            "an ascending list of env steps >= 0",
        )
        positive(self, "kappa", "lr", "alpha_lr", "init_alpha", "dual_lr", "kl_target", "std_multiplier")
        unit_interval(self, "tau", "adam_b1_scalars")
        dual_range = f"a number in (exp({_DUAL_LOG_MIN:g}), exp({_DUAL_LOG_MAX:g})) (the dual variables' range)"
        for name in ("init_optimism", "init_kl_weight"):
            value = getattr(self, name)
            check(self, name, math.exp(_DUAL_LOG_MIN) < value < math.exp(_DUAL_LOG_MAX), dual_range)
        check(self, "log_std_max", self.log_std_max > self.log_std_min, "a number > log_std_min")


def orthogonal_linear(gain: float, bias: bool = True) -> Callable[[int, int], nn.Linear]:
    """A factory of ``nn.Linear`` layers with an orthogonal weight of the given gain and a zero bias."""

    def make(in_features: int, out_features: int) -> nn.Linear:
        layer = nn.Linear(in_features, out_features, bias=bias)
        nn.init.orthogonal_(layer.weight, gain)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
        return layer

    return make


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dimension with separate scale and offset per ensemble member: (E, N, F)."""

    def __init__(self, ensemble_size: int, features: int, eps: float = _LAYER_NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias


class BroNet(nn.Module):
    """Dense → LN → ReLU, ``depth`` residual blocks x + LN(Dense(ReLU(LN(Dense(x))))), optional Dense head.

    With ``ensemble_size`` E the network is E independent copies evaluated in one batched pass: input (N, in)
    (shared) or (E, N, in), output (E, N, out).
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        out_features: int | None = None,
        ensemble_size: int | None = None,
    ):
        super().__init__()
        make = orthogonal_linear(math.sqrt(2.0))

        def linear(a: int, b: int) -> nn.Module:
            return make(a, b) if ensemble_size is None else EnsembleLinear(ensemble_size, a, b, init=make)

        def norm() -> nn.Module:
            if ensemble_size is None:
                return nn.LayerNorm(width, eps=_LAYER_NORM_EPS)
            return EnsembleLayerNorm(ensemble_size, width)

        self.stem = nn.Sequential(linear(in_features, width), norm(), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(linear(width, width), norm(), nn.ReLU(), linear(width, width), norm()) for _ in range(depth)
        )
        self.head = None if out_features is None else linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return x if self.head is None else self.head(x)


class BROActor(nn.Module):
    """Main actor: BroNet trunk, (μ, log σ) heads, log σ squashed into [min, max] with tanh."""

    def __init__(self, obs_dim: int, act_dim: int, config: BROConfig):
        super().__init__()
        self.trunk = BroNet(obs_dim, config.actor_width, config.actor_depth)
        self.mean = orthogonal_linear(math.sqrt(2.0))(config.actor_width, act_dim)
        self.log_std = orthogonal_linear(1.0)(config.actor_width, act_dim)
        self.log_std_min, self.log_std_max = config.log_std_min, config.log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        squashed = 0.5 * (1.0 + torch.tanh(self.log_std(h)))
        return self.mean(h), self.log_std_min + (self.log_std_max - self.log_std_min) * squashed


class OptimisticActor(nn.Module):
    """Exploration policy N(μ + shift(s, μ), (m·σ)²): a BroNet on (s, μ) with a small bias-free shift head."""

    def __init__(self, obs_dim: int, act_dim: int, config: BROConfig):
        super().__init__()
        self.trunk = BroNet(obs_dim + act_dim, config.actor_width, config.actor_depth)
        self.shift = orthogonal_linear(config.shift_init_scale, bias=False)(config.actor_width, act_dim)
        self.log_std_multiplier = math.log(config.std_multiplier)

    def forward(
        self, obs: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shift = self.shift(self.trunk(torch.cat([obs, mean], dim=-1)))
        return mean + shift, log_std + self.log_std_multiplier


def _dual_raw(value: float) -> float:
    """The raw parameter p whose squashed value exp(lo + (hi − lo)·½(1 + tanh p)) equals ``value``."""
    return math.atanh((math.log(value) - _DUAL_LOG_MIN) / (0.5 * (_DUAL_LOG_MAX - _DUAL_LOG_MIN)) - 1.0)


class BRODuals(nn.Module):
    """Temperature α = exp(log α) and the dual variables β_opt, λ (range-limited through tanh)."""

    def __init__(self, config: BROConfig):
        super().__init__()
        tuned = config.alpha is None
        initial_log_alpha = log_temperature(config.init_alpha if tuned else config.alpha)
        self.log_alpha = nn.Parameter(torch.tensor(initial_log_alpha), requires_grad=tuned)
        self.optimism_raw = nn.Parameter(torch.tensor(_dual_raw(config.init_optimism)))
        self.kl_weight_raw = nn.Parameter(torch.tensor(_dual_raw(config.init_kl_weight)))

    @staticmethod
    def _squash(raw: torch.Tensor) -> torch.Tensor:
        return torch.exp(_DUAL_LOG_MIN + (_DUAL_LOG_MAX - _DUAL_LOG_MIN) * 0.5 * (1.0 + torch.tanh(raw)))

    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def optimism(self) -> torch.Tensor:
        return self._squash(self.optimism_raw)

    def kl_weight(self) -> torch.Tensor:
        return self._squash(self.kl_weight_raw)


class BRONetworks(nn.Module):
    """Everything a BRO reset re-initialises: critics, target critics, both actors, α, β_opt and λ."""

    def __init__(self, obs_dim: int, act_dim: int, config: BROConfig):
        super().__init__()
        in_features = obs_dim + act_dim
        c = config
        self.critic = BroNet(in_features, c.critic_width, c.critic_depth, c.n_quantiles, ensemble_size=2)
        self.target_critic = BroNet(in_features, c.critic_width, c.critic_depth, c.n_quantiles, ensemble_size=2)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.actor = BROActor(obs_dim, act_dim, c)
        self.actor_o = OptimisticActor(obs_dim, act_dim, c)
        self.duals = BRODuals(c)


def quantile_midpoints(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """τ_i = (2i − 1)/(2n), i = 1..n: the quantile fractions a QR critic's n outputs estimate."""
    return (torch.arange(n, dtype=torch.float32, device=device) + 0.5) / n


def quantile_huber_loss(pred: torch.Tensor, target: torch.Tensor, taus: torch.Tensor, kappa: float) -> torch.Tensor:
    """Quantile-Huber loss (QR-DQN, Dabney et al. 2018) as BRO computes it, summed over ensemble members.

    pred (E, B, N) quantile estimates θ_i; target (B, M) target samples y_j; taus (N,). With δ_bij = y_bj − θ_bi and
    H_κ the Huber function, returns Σ_e mean_{b,j} Σ_i |τ_i − 1{δ_bij < 0}| · H_κ(δ_bij)/κ. ``target`` is
    expected to carry no gradient.
    """
    td = target.unsqueeze(-2) - pred.unsqueeze(-1)  # (E, B, N, M)
    abs_td = td.abs()
    huber = torch.where(abs_td <= kappa, 0.5 * td.square(), kappa * (abs_td - 0.5 * kappa))
    taus = taus.unsqueeze(-1)
    weight = torch.where(td < 0, 1.0 - taus, taus)  # |τ − 1{δ < 0}|; a comparison carries no gradient
    return (weight * huber).sum(-2).mean((-2, -1)).sum() / kappa


def gaussian_kl(
    mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor
) -> torch.Tensor:
    """KL(N(μ_p, σ_p²) ‖ N(μ_q, σ_q²)) of diagonal Gaussians, summed over the last dimension."""
    var_ratio = torch.exp(2.0 * (log_std_p - log_std_q))
    mahalanobis = (mean_p - mean_q).square() * torch.exp(-2.0 * log_std_q)
    return (log_std_q - log_std_p + 0.5 * (var_ratio + mahalanobis) - 0.5).sum(-1)


def _clear_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Zero every state tensor in place (step counts and moments): the same as a fresh Adam/AdamW, but the state
    tensors keep their storage, which graph-captured updates rely on."""
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                value.zero_()


class BRO(Agent):
    Config = BROConfig
    compiled_methods = ("act", "_gradient_step")
    config: BROConfig

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: BROConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        c = config
        # Resets rebuild the networks from this seed, so they return to the very same initial weights.
        self._init_seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.nets = self._initial_networks().to(device)
        n = self.nets
        # Fused (Adam)W: one kernel per parameter group (on CPU too), several times faster than the per-tensor loop.
        adamw = {"lr": c.lr, "weight_decay": c.weight_decay, "fused": True}
        self.critic_optimizer = torch.optim.AdamW(n.critic.parameters(), **adamw)
        self.actor_optimizer = torch.optim.AdamW(n.actor.parameters(), **adamw)
        self.actor_o_optimizer = torch.optim.AdamW(n.actor_o.parameters(), **adamw)
        betas = (c.adam_b1_scalars, 0.999)
        temperature = [{"params": [n.duals.log_alpha], "lr": c.alpha_lr}] if c.alpha is None else []
        self.dual_optimizer = torch.optim.Adam(
            [*temperature, {"params": [n.duals.optimism_raw, n.duals.kl_weight_raw], "lr": c.dual_lr}],
            betas=betas,
            fused=True,
        )
        self.optimizers = (self.critic_optimizer, self.actor_optimizer, self.actor_o_optimizer, self.dual_optimizer)
        self._actor_params = list(n.actor.parameters())
        trained_duals = [p for p in n.duals.parameters() if p.requires_grad]  # a fixed α is no input
        self._actor_o_and_dual_params = [*n.actor_o.parameters(), *trained_duals]
        self.taus = quantile_midpoints(c.n_quantiles, device)
        self.target_entropy = -act_dim / 2.0 if c.target_entropy is None else c.target_entropy
        self.gradient_steps = 0  # all gradient steps of the run (resets do not rewind it)
        self.resets_done = 0  # scheduled resets already applied; indexes ``reset_steps``

    @classmethod
    def default_config(cls, task: TaskSpec) -> BROConfig:
        return BROConfig()

    def _initial_networks(self) -> BRONetworks:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self._init_seed)
            return BRONetworks(self.obs_dim, self.act_dim, self.config)

    # --------------------------------------------------------------- resets
    def reset_if_scheduled(self, env_step: int) -> bool:
        """Apply a full reset if ``env_step`` has passed the next scheduled reset step; returns whether it did."""
        steps = self.config.reset_steps
        if self.resets_done >= len(steps) or env_step <= steps[self.resets_done]:
            return False
        while self.resets_done < len(steps) and env_step > steps[self.resets_done]:
            self.resets_done += 1
        self.reset()
        return True

    def reset(self) -> None:
        """Networks, α, β_opt, λ back to their initial values and all optimiser states cleared (buffer kept)."""
        self.nets.load_state_dict(self._initial_networks().state_dict())
        for optimizer in self.optimizers:
            _clear_optimizer_state(optimizer)

    # -------------------------------------------------------------- acting
    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        mean, log_std = self.nets.actor(obs)
        if deterministic:
            return torch.tanh(mean)
        mean_o, log_std_o = self.nets.actor_o(obs, mean, log_std)
        return torch.tanh(mean_o + log_std_o.exp() * torch.randn_like(mean_o))

    # ------------------------------------------------------------- training
    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Host schedule: a scheduled reset if one is due, then ``utd`` gradient steps on slices of one draw."""
        self.reset_if_scheduled(env_step)
        c = self.config
        b = c.batch_size
        batch = buffer.sample(b * c.utd)
        metrics: dict[str, torch.Tensor] = {}
        for i in range(c.utd):
            rows = slice(i * b, (i + 1) * b)
            metrics = self._gradient_step(
                batch.obs[rows], batch.actions[rows], batch.rewards[rows], batch.next_obs[rows], batch.terminated[rows]
            )
            self.gradient_steps += 1
        return metrics

    def _aggregate(self, q: torch.Tensor, spread_weight: float | torch.Tensor) -> torch.Tensor:
        """½(q¹ + q²) + w · ½|q¹ − q²| over the two critics (E = 2 first): w = −pessimism or +β_opt."""
        return 0.5 * (q[0] + q[1]) + spread_weight * 0.5 * (q[0] - q[1]).abs()

    def _gradient_step(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """One step of critic, actor, optimistic actor and duals (the compiled step function of :meth:`update`)."""
        c, n = self.config, self.nets
        alpha = n.duals.alpha().detach()

        # Critic: quantile regression towards the Polyak targets' quantiles.
        with torch.no_grad():
            next_actions, next_log_prob = tanh_gaussian_sample(*n.actor(next_obs))
            next_q = self._aggregate(n.target_critic(torch.cat([next_obs, next_actions], -1)), -c.pessimism)
            bootstrap = c.gamma * (1.0 - terminated).unsqueeze(-1)
            target = rewards.unsqueeze(-1) + bootstrap * (next_q - alpha * next_log_prob.unsqueeze(-1))
        q = n.critic(torch.cat([obs, actions], -1))
        critic_loss = quantile_huber_loss(q, target, self.taus, c.kappa)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        polyak_update(n.target_critic, n.critic, c.tau)

        # Actor against the updated critics.
        mean, log_std = n.actor(obs)
        pi_actions, log_prob = tanh_gaussian_sample(mean, log_std)
        q_pi = self._aggregate(n.critic(torch.cat([obs, pi_actions], -1)), -c.pessimism).mean(-1)
        actor_loss = (alpha * log_prob - q_pi).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=self._actor_params)
        self.actor_optimizer.step()
        entropy = -log_prob.detach().mean()

        # Optimistic actor around the updated actor; β_opt and λ enter as constants here.
        with torch.no_grad():
            mean_c, log_std_c = n.actor(obs)
        mean_o, log_std_o = n.actor_o(obs, mean_c, log_std_c)
        explore_actions = torch.tanh(mean_o + log_std_o.exp() * torch.randn_like(mean_o))
        q_explore = n.critic(torch.cat([obs, explore_actions], -1))
        optimism, kl_weight = n.duals.optimism(), n.duals.kl_weight()
        upper_bound = self._aggregate(q_explore, optimism.detach()).mean(-1)
        kl = gaussian_kl(mean_o, log_std_o - n.actor_o.log_std_multiplier, mean_c, log_std_c).mean()
        actor_o_loss = -upper_bound.mean() + kl_weight.detach() * kl

        # Temperature and the two duals, from the entropy and KL measured before this step's updates.
        kl_gap = kl.detach() / self.act_dim - c.kl_target
        alpha_loss = n.duals.alpha() * (entropy - self.target_entropy)
        dual_loss = alpha_loss + (optimism - c.pessimism) * kl_gap - kl_weight * kl_gap
        self.actor_o_optimizer.zero_grad(set_to_none=True)
        self.dual_optimizer.zero_grad(set_to_none=True)
        (actor_o_loss + dual_loss).backward(inputs=self._actor_o_and_dual_params)
        self.actor_o_optimizer.step()
        self.dual_optimizer.step()

        q_detached = q.detach()
        return {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "actor_o_loss": actor_o_loss.detach(),
            "q_mean": q_detached.mean(),
            "q_spread": 0.5 * (q_detached[0] - q_detached[1]).abs().mean(),
            "alpha": alpha,
            "entropy": entropy,
            "optimism": optimism.detach(),
            "kl_weight": kl_weight.detach(),
            "kl_per_dim": kl.detach() / self.act_dim,
        }

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": self.nets.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "init_seed": self._init_seed,
            "gradient_steps": self.gradient_steps,
            "resets_done": self.resets_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state["nets"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self._init_seed = state["init_seed"]
        self.gradient_steps = state["gradient_steps"]
        self.resets_done = state["resets_done"]


class BROFast(BRO):
    """BRO (Fast): the same agent at UTD 2; the reference then keeps only the first scheduled reset."""

    @classmethod
    def default_config(cls, task: TaskSpec) -> BROConfig:
        return BROConfig(utd=2, reset_steps=BRO_RESET_STEPS[:1])
