"""Soft Actor-Critic (Haarnoja et al., 2018) as CleanRL's ``sac_continuous_action.py`` runs it (``baselines.md`` §2).

Twin critics with Polyak-averaged targets (τ = 0.005), a tanh-squashed Gaussian actor whose log-std is squashed
into [-5, 2], and the temperature tuned towards the target entropy H̄ = −|A|:

* critic target  y = r + γ (1 − terminated) [min_j Q̄_j(s', a') − α log π(a'|s')],  a' ~ π(·|s')
* actor loss     L_π = E[α log π(a|s) − min_j Q_j(s, a)]
* temperature    L_α = −α · E[log π(ã|s) + H̄] with α = exp(log α) optimised in log α, and ã a fresh sample of
  the actor just updated (CleanRL's form; the gradient is −α·(log π + H̄) per sample, not −(log π + H̄))

As in CleanRL, the actor and α are updated ``policy_frequency`` times every ``policy_frequency`` critic updates,
each actor step followed by its α step; Adam lrs 3e-4 (actor) and 1e-3 (critic, α); 5000 uniform warm-up steps;
networks with PyTorch's default init. ``--set alpha=…`` fixes the temperature instead of tuning it (``alpha=0``:
no entropy term at all).

Deviations from the official code (``vwxyzjn/cleanrl`` at ``fe8d8a0``):

+------------------------------------------+----------------------------------------+----------------------------------+
| What differs from the official code      | Why                                    | Expected effect                  |
+==========================================+========================================+==================================+
| Evaluation: 5 deterministic episodes     | One protocol for all methods (5        | None on learning.                |
| (tanh of the mean) at the study's        | episodes, as DIME, BRO and CrossQ).    |                                  |
| cadence on a separate env; CleanRL       |                                        |                                  |
| reports the returns of its training      |                                        |                                  |
| episodes.                                |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| log π is that of the action in [−1, 1]^A | The agent sees only the unit action    | None on ±1 tasks without         |
| with the exact tanh Jacobian; CleanRL's  | space (``dime.tasks.make_env`` maps it | saturation; elsewhere CleanRL's  |
| is that of the env-scaled action,        | to the bounds), so s is unknown to it; | α drives E[log π] (in            |
| log(s·(1 − a²) + 1e-6) with s = (high −  | the floor alone, without s, is neither | unit-action terms) to dim A +    |
| low)/2, i.e. an extra −Σ_d log s_d when  | CleanRL's log π nor needed by the      | Σ_d log s_d instead of dim A:    |
| the bounds are not ±1 (Pendulum ±2,      | exact form (tried: in the test config  | +0.69 on Pendulum, −15.6 on      |
| Humanoid ±0.4) and a 1e-6 floor for      | it slowed Pendulum, seed 0 at 6k steps | Humanoid.                        |
| saturated actions.                       | −304 against −119).                    |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| The policy delay counts critic updates,  | The agent owns its update schedule.    | None (the same every-2nd         |
| not env steps                            |                                        | pattern).                        |
| (``global_step % policy_frequency``).    |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Environments: Gymnasium ``-v4``/``-v5``, | One env factory for the suite.         | None.                            |
| DMC and MyoSuite through                 |                                        |                                  |
| ``dime.tasks.make_env`` with actions in  |                                        |                                  |
| [−1, 1] mapped affinely to the bounds    |                                        |                                  |
| (CleanRL scales tanh by the same affine  |                                        |                                  |
| map).                                    |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Twin critics as one batched module (two  | One batched matmul instead of two MLPs | None.                            |
| members, each with its own parameters    | (speed).                               |                                  |
| and PyTorch's init).                     |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.common import tanh_gaussian_sample
from dime.agents import Agent, AgentConfig, at_least, check, nonempty_widths, positive, unit_interval
from dime.nn import EnsembleLinear, log_temperature, mlp, polyak_update
from dime.replay import Batch, ReplayBuffer
from dime.tasks import TaskSpec


class TanhGaussianActor(nn.Module):
    """π(a|s) = tanh(N(μ(s), σ(s)²)); log σ squashed into [log_std_min, log_std_max] with tanh (CleanRL)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], log_std_min: float, log_std_max: float):
        super().__init__()
        self.trunk = mlp(obs_dim, hidden[:-1], hidden[-1])
        self.head = nn.Linear(hidden[-1], 2 * act_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.head(F.relu(self.trunk(obs))).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1.0)
        return mean, log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action and its log-density log π(a|s) (Gaussian log-density minus tanh Jacobian)."""
        return tanh_gaussian_sample(*self(obs))

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(obs)[0])


class TwinQ(nn.Module):
    """Two Q(s, a) MLPs evaluated in one batched pass: returns (2, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], ensemble_size: int = 2):
        super().__init__()
        widths = [obs_dim + act_dim, *hidden, 1]
        self.layers = nn.ModuleList(EnsembleLinear(ensemble_size, a, b) for a, b in itertools.pairwise(widths))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x).squeeze(-1)


@dataclass
class SACConfig(AgentConfig):
    hidden: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 1e-3
    alpha_lr: float = 1e-3
    tau: float = 0.005
    policy_frequency: int = 2
    alpha: float | None = None  # a fixed temperature; None tunes it from init_alpha towards the target entropy
    init_alpha: float = 1.0
    target_entropy_per_dim: float = -1.0
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def validate(self) -> None:
        super().validate()
        nonempty_widths(self, "hidden")
        positive(self, "actor_lr", "critic_lr", "alpha_lr", "init_alpha")
        unit_interval(self, "tau")
        at_least(self, 1, "policy_frequency")
        at_least(self, 0, "alpha")
        check(self, "log_std_max", self.log_std_max > self.log_std_min, "a number > log_std_min")


class SAC(Agent):
    Config = SACConfig
    compiled_methods = ("act", "_critic_step", "_update_actor")
    config: SACConfig

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: SACConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        c = config
        self.actor = TanhGaussianActor(obs_dim, act_dim, c.hidden, c.log_std_min, c.log_std_max).to(device)
        self.critic = TwinQ(obs_dim, act_dim, c.hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        initial_log_alpha = log_temperature(c.init_alpha if c.alpha is None else c.alpha)
        self.log_alpha = torch.tensor(initial_log_alpha, device=device, requires_grad=c.alpha is None)
        self.target_entropy = c.target_entropy_per_dim * act_dim
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, fused=True)
        self._actor_parameters = list(self.actor.parameters())
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, fused=True)
        self.alpha_optimizer = (
            None if c.alpha is not None else torch.optim.Adam([self.log_alpha], lr=c.alpha_lr, fused=True)
        )
        self.gradient_steps = 0

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return self.actor.mode(obs) if deterministic else self.actor.sample(obs)[0]

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        c = self.config
        batch = buffer.sample(c.batch_size)
        metrics = self._critic_step(batch)
        if self.gradient_steps % c.policy_frequency == 0:
            for _ in range(c.policy_frequency):
                metrics.update(self._update_actor(batch.obs))
        self.gradient_steps += 1
        return metrics

    def _critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One TD step of both critics, then the Polyak step of their targets (the actor never reads them)."""
        c = self.config
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.sample(batch.next_obs)
            next_q = self.critic_target(batch.next_obs, next_actions).min(0).values - alpha * next_log_prob
            target = batch.rewards + c.gamma * (1.0 - batch.terminated) * next_q
        q = self.critic(batch.obs, batch.actions)
        critic_loss = F.mse_loss(q, target.expand_as(q), reduction="none").mean(-1).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        polyak_update(self.critic_target, self.critic, c.tau)
        return {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean(), "alpha": alpha}

    def _update_actor(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        alpha = self.log_alpha.detach().exp()
        actions, log_prob = self.actor.sample(obs)
        q = self.critic(obs, actions).min(0).values
        actor_loss = (alpha * log_prob - q).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        # `inputs`: no critic weight gradients (toggling requires_grad instead would split the compiled graph).
        actor_loss.backward(inputs=self._actor_parameters)
        self.actor_optimizer.step()
        metrics = {"actor_loss": actor_loss.detach(), "entropy": -log_prob.detach().mean()}
        if self.alpha_optimizer is not None:
            with torch.no_grad():
                _, fresh_log_prob = self.actor.sample(obs)  # CleanRL: a new sample of the updated actor
            alpha_loss = -(self.log_alpha.exp() * (fresh_log_prob + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict() if self.alpha_optimizer else None,
            "gradient_steps": self.gradient_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.alpha_optimizer is not None:
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.gradient_steps = state["gradient_steps"]
