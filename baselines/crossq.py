"""CrossQ (Bhatt, Palenicek et al., ICLR 2024) as run by the paper code's ``train.py -algo crossq`` preset.

SAC without target networks whose critics and actor use Batch Renormalisation (``baselines.md`` §3; the layer is
:class:`dime.batch_renorm.BatchRenorm`, the one DIME uses, ``dime.md`` §4.2):

* critic (per member j ∈ {1, 2}): BRN(s, a) → [Dense 2048 → ReLU → BRN] × 2 → Dense 1;
  actor: BRN(s) → [Dense 256 → ReLU → BRN] × 2 → Dense (μ, log σ), log σ clipped to [−20, 2], a = tanh(u);
  Dense layers use flax's default init (``bn_mode = 'brn_actor'``: BatchRenorm in both networks).
* critic update, one **joint train-mode pass** over (s, a) ∪ (s', a'), a' ~ π(·|s') from the actor in eval mode:
  [Q_j(s, a); Q_j(s', a')] = Q_j([s; s'], [a; a'])   (one BRN statistics update per critic update)
  y = r + γ (1 − terminated) [min_j Q_j(s', a') − α log π(a'|s')]   (no gradient through y, no target networks)
  L_Q = Σ_j ½ mean_b (y − Q_j(s, a))²
* every ``policy_delay`` = 3 critic updates, with the actor in train mode and the critics in eval mode:
  L_π = mean_b [α log π(a|s) − min_j Q_j(s, a)],   L_α = α · (H̄ − H̄_target) with H̄ = −mean_b log π(a|s),
  H̄_target = −|A|, α = exp(log α) initialised to 1 (the SBX form: the loss is α·(…), not log α·(…)).
  ``--set alpha=…`` fixes α instead (``alpha=0``: no entropy term).
* UTD 1, batch 256, Adam(lr 1e-3, β₁ 0.5) for actor and critic, learning_starts 5000, γ = 0.99 (0.9999 on Swimmer);
  evaluation with the deterministic action tanh(μ).

The temperature's Adam uses lr 1e-3 with optax's default β₁ = 0.9: the paper code builds it with
``optax.adam(learning_rate)`` and does not pass the β₁ = 0.5 it gives the actor and critic (``baselines.md`` §3
lists β₁ 0.5 for all three; the code says otherwise, and this module follows the code). ``alpha_adam_b1`` makes
it a choice.

Deviations from the official code (``adityab/CrossQ`` at ``a318a26``):

+------------------------------------------+----------------------------------------+----------------------------------+
| What differs from the official code      | Why                                    | Expected effect                  |
+==========================================+========================================+==================================+
| Evaluation: 5 deterministic episodes at  | One protocol for all methods:          | None on learning.                |
| the study's cadence on a separate env;   | one-episode evaluations are too noisy  |                                  |
| the paper code runs 1 episode every      | for the study's IQM tables.            |                                  |
| 5e6/300 ≈ 16.7k steps.                   |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Environments: Gymnasium ``-v4``/``-v5``, | One env factory for the suite; the     | Gym returns not strictly         |
| DMC and MyoSuite through                 | CrossQ paper has no MyoSuite results   | comparable with ``-v3`` numbers. |
| ``dime.tasks.make_env``; MyoSuite runs   | and the horizon the DIME authors used  |                                  |
| on the registry horizon. Time-limit      | for CrossQ there is undocumented.      |                                  |
| truncations bootstrap, as in SB3.        |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| The two critics are one stacked module   | Speed; numerically the same            | None.                            |
| (batched matmuls over an ensemble        | computation.                           |                                  |
| dimension, each member with its own      |                                        |                                  |
| parameters and BRN statistics) rather    |                                        |                                  |
| than flax ``nn.vmap``.                   |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.common import tanh_gaussian_sample
from dime.agents import Agent, AgentConfig, at_least, check, nonempty_widths, positive, unit_interval
from dime.batch_renorm import BatchRenorm
from dime.nn import EnsembleLinear, flax_linear, log_temperature
from dime.replay import ReplayBuffer
from dime.tasks import TaskSpec


@dataclass
class CrossQConfig(AgentConfig):
    learning_starts: int = 5000
    batch_size: int = 256
    critic_hidden: tuple[int, ...] = (2048, 2048)
    actor_hidden: tuple[int, ...] = (256, 256)
    n_critics: int = 2
    lr: float = 1e-3  # actor and critic
    adam_b1: float = 0.5
    alpha_lr: float = 1e-3
    alpha_adam_b1: float = 0.9  # optax default: the paper code does not pass β₁ = 0.5 to the temperature
    utd: int = 1
    policy_delay: int = 3
    alpha: float | None = None  # a fixed temperature; None tunes it from init_alpha towards the target entropy
    init_alpha: float = 1.0
    target_entropy: float | None = None  # None: −|A|
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    brn_momentum: float = 0.99  # flax convention: running = momentum·running + (1 − momentum)·batch
    brn_warmup_steps: int = 100_000

    def validate(self) -> None:
        super().validate()
        nonempty_widths(self, "critic_hidden", "actor_hidden")
        at_least(self, 1, "n_critics", "utd", "policy_delay")
        positive(self, "lr", "alpha_lr", "init_alpha")
        unit_interval(self, "adam_b1", "alpha_adam_b1", "brn_momentum")
        at_least(self, 0, "alpha", "brn_warmup_steps")
        check(self, "log_std_max", self.log_std_max > self.log_std_min, "a number > log_std_min")


class CrossQActor(nn.Module):
    """BRN(s) → [Dense → ReLU → BRN]* → (μ, log σ) with log σ clipped (not squashed) into [min, max]."""

    def __init__(self, obs_dim: int, act_dim: int, config: CrossQConfig):
        super().__init__()
        brn = {"momentum": config.brn_momentum, "warmup_steps": config.brn_warmup_steps}
        widths = [obs_dim, *config.actor_hidden]
        self.input_norm = BatchRenorm(obs_dim, **brn)
        self.layers = nn.ModuleList(flax_linear(a, b) for a, b in itertools.pairwise(widths))
        self.norms = nn.ModuleList(BatchRenorm(b, **brn) for b in widths[1:])
        # μ and log σ are two flax Dense heads of the same fan-in; one (h, 2A) layer has the same init law.
        self.head = flax_linear(widths[-1], 2 * act_dim)
        self.log_std_min, self.log_std_max = config.log_std_min, config.log_std_max

    def forward(self, obs: torch.Tensor, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.input_norm(obs, training)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = norm(F.relu(layer(x)), training)
        mean, log_std = self.head(x).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)


class CrossQCritic(nn.Module):
    """``n_critics`` stacked Q-networks BRN(s, a) → [Dense → ReLU → BRN]* → Dense 1; returns (E, N)."""

    def __init__(self, obs_dim: int, act_dim: int, config: CrossQConfig):
        super().__init__()
        e = config.n_critics
        brn = {"ensemble_size": e, "momentum": config.brn_momentum, "warmup_steps": config.brn_warmup_steps}
        widths = [obs_dim + act_dim, *config.critic_hidden]
        self.ensemble_size = e
        self.input_norm = BatchRenorm(widths[0], **brn)
        self.layers = nn.ModuleList(EnsembleLinear(e, a, b, init=flax_linear) for a, b in itertools.pairwise(widths))
        self.norms = nn.ModuleList(BatchRenorm(b, **brn) for b in widths[1:])
        self.head = EnsembleLinear(e, widths[-1], 1, init=flax_linear)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, training: bool) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1).unsqueeze(0).expand(self.ensemble_size, -1, -1)
        x = self.input_norm(x, training)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = norm(F.relu(layer(x)), training)
        return self.head(x).squeeze(-1)


class CrossQ(Agent):
    Config = CrossQConfig
    config: CrossQConfig

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: CrossQConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        c = config
        self.actor = CrossQActor(obs_dim, act_dim, c).to(device)
        self.critic = CrossQCritic(obs_dim, act_dim, c).to(device)
        tuned = c.alpha is None
        initial_log_alpha = log_temperature(c.init_alpha if tuned else c.alpha)
        self.log_alpha = torch.tensor(initial_log_alpha, device=device, requires_grad=tuned)
        self.target_entropy = -float(act_dim) if c.target_entropy is None else c.target_entropy
        betas = (c.adam_b1, 0.999)
        # Fused Adam: one kernel per parameter group (on CPU too), several times faster than the per-tensor loop.
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.lr, betas=betas, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.lr, betas=betas, fused=True)
        self.alpha_optimizer = (
            torch.optim.Adam([self.log_alpha], lr=c.alpha_lr, betas=(c.alpha_adam_b1, 0.999), fused=True)
            if tuned
            else None
        )
        self._actor_step_inputs = [*self.actor.parameters(), *([self.log_alpha] if tuned else [])]
        self.gradient_steps = 0  # critic updates so far; host-side, it drives the policy delay
        zero = torch.zeros((), device=device)
        # Returned on every call (so the metric keys are stable), refreshed on actor steps.
        self._actor_metrics = {"actor_loss": zero, "entropy": zero.clone(), "alpha_loss": zero.clone()}

    @classmethod
    def default_config(cls, task: TaskSpec) -> CrossQConfig:
        # train.py: gamma = 0.99, except 0.9999 for Swimmer.
        return CrossQConfig(gamma=0.9999 if task.env_id.startswith("Swimmer") else 0.99)

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        mean, log_std = self.actor(obs, training=False)
        if deterministic:
            return torch.tanh(mean)
        return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))  # no log-density needed to act

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        c = self.config
        b = c.batch_size
        # One draw for all UTD steps, sliced per step, as the reference samples batch × UTD at once.
        batch = buffer.sample(b * c.utd)
        metrics: dict[str, torch.Tensor] = {}
        for i in range(c.utd):
            rows = slice(i * b, (i + 1) * b)
            metrics = self._critic_step(
                batch.obs[rows], batch.actions[rows], batch.rewards[rows], batch.next_obs[rows], batch.terminated[rows]
            )
            self.gradient_steps += 1
            if self.gradient_steps % c.policy_delay == 0:
                self._actor_metrics = self._actor_step(batch.obs[rows])
        return {**metrics, **self._actor_metrics}

    def _critic_step(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_actions, next_log_prob = tanh_gaussian_sample(*self.actor(next_obs, training=False))
        # The joint pass: BRN normalises current and next rows with the same batch statistics (araffin/sbx#36).
        q = self.critic(torch.cat([obs, next_obs]), torch.cat([actions, next_actions]), training=True)
        q_current, q_next = q.chunk(2, dim=1)
        next_value = q_next.min(0).values - alpha * next_log_prob
        target = (rewards + self.config.gamma * (1.0 - terminated) * next_value).detach()
        critic_loss = 0.5 * (target - q_current).square().mean(-1).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        return {"critic_loss": critic_loss.detach(), "q_mean": q_current.detach().mean(), "alpha": alpha}

    def _actor_step(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        alpha = self.log_alpha.detach().exp()
        actions, log_prob = tanh_gaussian_sample(*self.actor(obs, training=True))
        q = self.critic(obs, actions, training=False).min(0).values
        actor_loss = (alpha * log_prob - q).mean()
        entropy = -log_prob.detach().mean()
        alpha_loss = self.log_alpha.exp() * (entropy - self.target_entropy)
        self.actor_optimizer.zero_grad(set_to_none=True)
        if self.alpha_optimizer is None:
            actor_loss.backward(inputs=self._actor_step_inputs)
        else:
            self.alpha_optimizer.zero_grad(set_to_none=True)
            # The two losses share no parameters; `inputs` keeps autograd from computing critic weight gradients.
            (actor_loss + alpha_loss).backward(inputs=self._actor_step_inputs)
        self.actor_optimizer.step()
        if self.alpha_optimizer is not None:
            self.alpha_optimizer.step()
        return {"actor_loss": actor_loss.detach(), "entropy": entropy, "alpha_loss": alpha_loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": None if self.alpha_optimizer is None else self.alpha_optimizer.state_dict(),
            "gradient_steps": self.gradient_steps,
            "actor_metrics": {k: v.clone() for k, v in self._actor_metrics.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.alpha_optimizer is not None:
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.gradient_steps = state["gradient_steps"]
        self._actor_metrics = {k: v.to(self.device) for k, v in state["actor_metrics"].items()}
