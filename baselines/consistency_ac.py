"""Consistency-AC (Ding & Jin; ICLR 2024), online variant, ``baselines.md`` §10.

Policy: a consistency model (Song et al. 2023) over actions, conditioned on the state,

    f_θ(x, σ, s) = c_skip(σ)·x + c_out(σ)·F_θ(x, σ, s),
    c_skip(σ) = σ_d² / ((σ − σ_min)² + σ_d²),   c_out(σ) = σ_d (σ − σ_min) / √(σ² + σ_d²),

with σ_d = 0.5 and σ_min = 0.002, so that the boundary condition f_θ(x, σ_min, s) = x holds exactly (Song et al.
eq. 7). F_θ is the Diffusion-QL ε-MLP fed with σ itself as its "time". Multistep consistency sampling (Song et
al. Alg. 1) over the N = 5 noise levels σ_1 < … < σ_N spaced linearly in [2, 80] (the official code's grid):

    x ~ N(0, σ_N² I),  a ← f_θ(x, σ_N);   for n = N−1 … 1:  x ← a + √(σ_n² − σ_min²)·z,  a ← f_θ(x, σ_n),

and the final a is clipped to [−1, 1]. Gradients flow through every evaluation of f_θ.

* actor loss (online RL: no consistency/BC term): L = −E Q_i(s, a_θ) / |E Q_j(s, a_θ)|.detach() with a fair
  coin choosing (i, j) ∈ {(1, 2), (2, 1)} (Diffusion-QL's normalisation);
* critic: twin 3 × 256 Mish, y = r + γ(1 − terminated) min_j Q̄_j(s', a'), a' from an EMA actor (decay 0.995,
  every 5 updates from update 1000 on); Polyak τ = 0.005; global grad-norm clipping;
* action selection (acting and evaluation): 50 candidates, one drawn from softmax(min_j Q̄_j);
* exploration: ε-greedy as in the official ``online.py``: with probability ε a uniform action, ε decaying
  linearly from 1 to 0.01 over ``epsilon_decay_steps`` env steps (10% of the run there; 100k = 10% of 1M here).
  Evaluation never takes ε-random actions.

Deviations and choices (common protocol):

* time-limit truncations bootstrap (the official SB3 buffer uses ``handle_timeout_termination=False``);
* one env and one update per env step (UTD 1). The official loop trains once every 4 steps of a 2-env vector
  env (UTD 1/8); the paper states no UTD, and UTD 1 is what every other method of the suite uses;
* lr 3e-4 for actor and critic and grad-norm clip 1.0, the agent-class defaults: ``online.py`` reads lr (1e-5)
  and the clip (1–10) from a table keyed by D4RL dataset names, which has no entry for these tasks;
* learning_starts 10k uniform steps (the official loop starts at 0, with ε = 1 early on); evaluation 10 episodes
  (the official count for D4RL ``-v2`` tasks).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.diffusion_ql import normalised_q_loss, softmax_q_select
from baselines.diffusion_utils import EpsilonMLP, TwinCritic, agent_state, load_agent_state, twin_critic_step
from dime.agents import Agent, AgentConfig
from dime.nn import polyak_update
from dime.replay import Batch, ReplayBuffer
from dime.tasks import TaskSpec


@dataclass
class ConsistencyACConfig(AgentConfig):
    learning_starts: int = 10_000
    eval_episodes: int = 10
    eval_deterministic: bool = True  # no ε-greedy; softmax(Q) over 50 consistency samples
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    num_steps: int = 5
    sigma_min: float = 0.002
    sigma_low: float = 2.0
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    grad_norm: float = 1.0
    tau: float = 0.005
    ema_decay: float = 0.995
    ema_every: int = 5
    ema_start: int = 1000
    num_candidates: int = 50
    epsilon_start: float = 1.0
    epsilon_end: float = 0.01
    epsilon_decay_steps: int = 100_000


class ConsistencyPolicy(nn.Module):
    """f_θ(x, σ, s) with the boundary-preserving skip parametrisation and multistep consistency sampling."""

    def __init__(self, obs_dim: int, act_dim: int, config: ConsistencyACConfig):
        super().__init__()
        self.net = EpsilonMLP(obs_dim, act_dim, config.actor_hidden)
        self.act_dim = act_dim
        self.sigma_min, self.sigma_data = config.sigma_min, config.sigma_data
        self.sigmas = [float(s) for s in torch.linspace(config.sigma_low, config.sigma_max, config.num_steps)]

    def consistency(self, x: torch.Tensor, sigma: float, obs: torch.Tensor) -> torch.Tensor:
        shifted = sigma - self.sigma_min
        c_skip = self.sigma_data**2 / (shifted**2 + self.sigma_data**2)
        c_out = self.sigma_data * shifted / math.sqrt(sigma**2 + self.sigma_data**2)
        return c_skip * x + c_out * self.net(x, torch.full((1,), sigma, device=x.device), obs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        sigmas = self.sigmas[::-1]
        x = sigmas[0] * torch.randn(obs.shape[0], self.act_dim, device=obs.device)
        action = self.consistency(x, sigmas[0], obs)
        for sigma in sigmas[1:]:
            x = action + math.sqrt(sigma**2 - self.sigma_min**2) * torch.randn_like(action)
            action = self.consistency(x, sigma, obs)
        return action.clamp(-1.0, 1.0)


class ConsistencyAC(Agent):
    Config = ConsistencyACConfig
    compiled_methods = ("act", "_critic_step", "_actor_step", "_ema_step")
    config: ConsistencyACConfig
    _STATE = (
        "actor",
        "actor_ema",
        "critic",
        "critic_target",
        "actor_optimizer",
        "critic_optimizer",
        "gradient_steps",
        "env_step",
    )

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: ConsistencyACConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        c = config
        self.actor = ConsistencyPolicy(obs_dim, act_dim, c).to(device)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinCritic(obs_dim, act_dim, c.critic_hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, fused=True)
        self.gradient_steps = 0
        self._epsilon = torch.tensor(c.epsilon_start, device=device)
        self.env_step = 0  # last env step seen by ``update``; drives the ε schedule of ``act``

    @classmethod
    def default_config(cls, task: TaskSpec) -> ConsistencyACConfig:
        return ConsistencyACConfig()

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
        c = self.config
        fraction = min(self.env_step / max(c.epsilon_decay_steps, 1), 1.0)
        return c.epsilon_start + fraction * (c.epsilon_end - c.epsilon_start)

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        actions = softmax_q_select(self.actor, self.critic_target, obs, self.act_dim, self.config.num_candidates)
        if deterministic:
            return actions
        explore = torch.rand(obs.shape[0], 1, device=obs.device) < self._epsilon
        return torch.where(explore, torch.rand_like(actions) * 2.0 - 1.0, actions)

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Host schedule: a critic step, an actor step, and every ``ema_every`` updates from ``ema_start`` on, the
        EMA actor's step; also moves ``act``'s ε to this env step's value (see :attr:`env_step`)."""
        c = self.config
        self.env_step = env_step
        batch = buffer.sample(c.batch_size)
        metrics = self._critic_step(batch)
        metrics.update(self._actor_step(batch.obs))
        if self.gradient_steps % c.ema_every == 0 and self.gradient_steps >= c.ema_start:
            self._ema_step()
        self.gradient_steps += 1
        return metrics

    def _critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Twin-critic TD step at an EMA-actor sample."""
        c = self.config
        with torch.no_grad():
            next_actions = self.actor_ema(batch.next_obs)
        return twin_critic_step(
            self.critic, self.critic_target, self.critic_optimizer, batch, next_actions, c.gamma, c.tau, c.grad_norm
        )

    def _actor_step(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        self.critic.requires_grad_(False)
        actor_loss = normalised_q_loss(self.critic(obs, self.actor(obs)))
        self.critic.requires_grad_(True)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        if c.grad_norm > 0:
            nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_norm)
        self.actor_optimizer.step()
        return {"actor_loss": actor_loss.detach()}

    def _ema_step(self) -> None:
        polyak_update(self.actor_ema, self.actor, 1.0 - self.config.ema_decay)

    def state_dict(self) -> dict[str, Any]:
        return agent_state(self, self._STATE)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_agent_state(self, state, self._STATE)
