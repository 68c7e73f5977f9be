"""QVPO — Q-weighted variational policy optimisation (Ding et al., NeurIPS 2024), ``baselines.md`` §8.

The recommended mode of the official code (``--weighted --aug``, ``q_transform = qadv``, ``chosen = 1``):

* actor: for each state s of a minibatch, draw K = 64 actions from the current diffusion policy, score them with
  min(Q₁, Q₂), keep the best a* and weight its diffusion ε-loss by the advantage
  ω(s) = max(Q(s, a*) − (1/K) Σ_k Q(s, a_k), 0) (the paper's Q-weighted variational loss with the "qadv"
  transform, eqs. 9–11);
* entropy regularisation: 10 uniform actions per state join the same loss with weight ``entropy_alpha``·ω(s)
  (α_ent = 0.02); the loss is the mean of w·‖ε − ε_θ‖² over all (1 + 10)·B rows and all action dims;
* critic: twin 3 × 256 Mish, y = r + γ(1 − terminated) min_j Q̄_j(s', a'), a' the best of 4 samples of the
  EMA target actor under the target critics; τ = 0.005 for both targets, every update;
* diffusion: T = 20 cosine steps, x̂_0 clipping, noise ratio 1; ε-network 32 → 256 → 32 time MLP, 3 × 256 Mish;
* optimisation: Adam (ε = 1e-5), diffusion lr 1e-4, critic lr 3e-4, global grad-norm clip 2, batch 256.

Acting: best of 4 samples by min(Q₁, Q₂); evaluation: best of 32 (both with the current critics and noise
ratio 1, as in the official code); evaluation 10 episodes.

Deviations (common protocol): time-limit truncations bootstrap (official: ``mask = 0 if done``, truncation is
terminal). The official code's ε-greedy option defaults to 0 and is not reproduced.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.diffusion_utils import (
    DiffusionSchedule,
    EpsilonMLP,
    TwinCritic,
    agent_state,
    gather_candidates,
    load_agent_state,
    repeat_obs,
    twin_critic_step,
)
from dime.agents import Agent, AgentConfig
from dime.nn import polyak_update
from dime.replay import Batch, ReplayBuffer
from dime.tasks import TaskSpec


@dataclass
class QVPOConfig(AgentConfig):
    learning_starts: int = 10_000
    eval_episodes: int = 10
    eval_deterministic: bool = True  # best of ``eval_samples`` by Q
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    time_dim: int = 32
    time_hidden: int = 256
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    diffusion_steps: int = 20
    beta_schedule: str = "cosine"
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    adam_eps: float = 1e-5
    grad_norm: float = 2.0
    tau: float = 0.005
    train_samples: int = 64
    behavior_samples: int = 4
    target_samples: int = 4
    eval_samples: int = 32
    entropy_samples: int = 10
    entropy_alpha: float = 0.02
    noise_ratio: float = 1.0


class QVPO(Agent):
    Config = QVPOConfig
    compiled_methods = ("act", "_critic_step", "_actor_step")
    config: QVPOConfig
    _STATE = (
        "actor",
        "actor_target",
        "critic",
        "critic_target",
        "actor_optimizer",
        "critic_optimizer",
        "gradient_steps",
    )

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: QVPOConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        c = config
        self.actor = EpsilonMLP(obs_dim, act_dim, c.actor_hidden, c.time_dim, c.time_hidden, c.time_dim).to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinCritic(obs_dim, act_dim, c.critic_hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.schedule = DiffusionSchedule.make(c.beta_schedule, c.diffusion_steps).to(device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, eps=c.adam_eps, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, eps=c.adam_eps, fused=True)
        self.gradient_steps = 0

    @classmethod
    def default_config(cls, task: TaskSpec) -> QVPOConfig:
        return QVPOConfig()

    def candidates(
        self, obs: torch.Tensor, num: int, actor: nn.Module, critic: TwinCritic
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` policy samples per state, (B, K, A), and their min_j Q_j, (B, K)."""
        obs_rep = repeat_obs(obs, num)
        actions = self.schedule.sample(actor, obs_rep, self.act_dim, noise_ratio=self.config.noise_ratio)
        q = critic.q_min(obs_rep, actions)
        return actions.view(obs.shape[0], num, self.act_dim), q.view(obs.shape[0], num)

    def best_of(self, obs: torch.Tensor, num: int, actor: nn.Module, critic: TwinCritic) -> torch.Tensor:
        actions, q = self.candidates(obs, num, actor, critic)
        return gather_candidates(actions, q.argmax(-1))

    @staticmethod
    def select_best(candidates: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """QVPO's selection: the best candidate per state and its weight max(Q_best − mean_k Q_k, 0)."""
        best = q.argmax(-1)
        weight = (q.gather(1, best.unsqueeze(1)).squeeze(1) - q.mean(-1)).clamp(min=0.0)
        return gather_candidates(candidates, best), weight

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        num = self.config.eval_samples if deterministic else self.config.behavior_samples
        return self.best_of(obs, num, self.actor, self.critic)

    def actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Q-weighted diffusion loss with the uniform-action entropy term; returns (loss, mean weight)."""
        c = self.config
        with torch.no_grad():
            candidates, q = self.candidates(obs, c.train_samples, self.actor, self.critic)
            best, weight = self.select_best(candidates, q)
        actions, states, weights = best, obs, weight
        if c.entropy_alpha > 0 and c.entropy_samples > 0:
            n = c.entropy_samples
            uniform = torch.rand(obs.shape[0] * n, self.act_dim, device=obs.device) * 2.0 - 1.0
            actions = torch.cat([best, uniform])
            states = torch.cat([obs, obs.repeat(n, 1)])
            weights = torch.cat([weight, c.entropy_alpha * weight.repeat(n)])
        return self.schedule.epsilon_loss(self.actor, actions, states, weights), weight.mean()

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Host schedule: a critic step, then an actor step on a fresh minibatch (as the official code samples)."""
        c = self.config
        metrics = self._critic_step(buffer.sample(c.batch_size))
        metrics.update(self._actor_step(buffer.sample(c.batch_size).obs))
        self.gradient_steps += 1
        return metrics

    def _critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Twin-critic TD step at the target actor's best-of-N sample."""
        c = self.config
        with torch.no_grad():
            next_actions = self.best_of(batch.next_obs, c.target_samples, self.actor_target, self.critic_target)
        return twin_critic_step(
            self.critic, self.critic_target, self.critic_optimizer, batch, next_actions, c.gamma, c.tau, c.grad_norm
        )

    def _actor_step(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        actor_loss, mean_weight = self.actor_loss(obs)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        if c.grad_norm > 0:
            nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_norm)
        self.actor_optimizer.step()
        polyak_update(self.actor_target, self.actor, c.tau)
        return {"actor_loss": actor_loss.detach(), "advantage_weight": mean_weight}

    def state_dict(self) -> dict[str, Any]:
        return agent_state(self, self._STATE)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_agent_state(self, state, self._STATE)
