"""Diffusion-QL (Wang, Hunt, Zhou; ICLR 2023), run online, ``baselines.md`` §6.

Policy: a conditional DDPM over actions, T = 5 VP steps, x̂_0 clipped to [−1, 1] at every reverse step; the
ε-network is Diffusion-QL's (16-d sinusoidal time embedding → 32 → 16, trunk 3 × 256 Mish).

* actor loss (paper eq. 5)  L(θ) = L_bc(θ) + η·L_q(θ), with
  L_bc = E_{(s,a)~D, t, ε} ‖ε − ε_θ(√ᾱ_t a + √(1 − ᾱ_t) ε, t, s)‖² (Ho et al. eq. 14) and
  L_q = −E_s[Q_i(s, a_θ)] / |E_s Q_j(s, a_θ)| (detached denominator), (i, j) = (1, 2) or (2, 1) by a fair coin,
  a_θ a full reverse-chain sample with gradients through all T steps;
* critic: twin 3 × 256 Mish, y = r + γ(1 − terminated) min_j Q̄_j(s', a'), a' from an EMA copy of the actor
  (decay 0.995, refreshed every 5 updates once 1000 updates are done; before that it stays at the initial actor,
  as in the official code); target critics by Polyak τ = 0.005 every update; global grad-norm clipping;
* action selection (acting and evaluation alike): 50 candidates per state, one drawn from softmax(min_j Q̄_j)
  (target critics, no temperature); the draw uses the Gumbel-max trick instead of ``torch.multinomial``.

Choices for the online setting (the method and its code are offline, D4RL-only):

* exploration is the policy's own stochasticity (diffusion sample + softmax(Q) draw), no extra noise;
* η = 1.0 (the D4RL locomotion value); lr 3e-4 for actor and critic; grad-norm clip 1.0 (the agent-class default;
  the D4RL table, 1–10, is keyed by dataset names that do not exist online); no max-Q backup (AntMaze-only);
  learning_starts 10k; evaluation 10 episodes (the official ``eval_episodes``);
* time-limit truncations bootstrap (the D4RL code uses ``not_done`` from the dataset's terminals).

Observed online (64-unit test nets): on Pendulum-v1 the policy barely improved in 8k steps (about -1000), its
samples staying near the buffer's action distribution, since |∇L_q| = |∇ₐQ|/|Q̄| is small next to the BC
gradient; on InvertedPendulum it learns (the learning test).
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
    gumbel_max,
    load_agent_state,
    repeat_obs,
    twin_critic_step,
)
from dime.agents import Agent, AgentConfig
from dime.nn import polyak_update
from dime.replay import Batch, ReplayBuffer
from dime.tasks import TaskSpec


@dataclass
class DiffusionQLConfig(AgentConfig):
    learning_starts: int = 10_000
    eval_episodes: int = 10
    eval_deterministic: bool = True  # same rule as acting: softmax(Q) over 50 diffusion samples
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    diffusion_steps: int = 5
    beta_schedule: str = "vp"
    eta: float = 1.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    grad_norm: float = 1.0  # <= 0 disables clipping
    tau: float = 0.005
    ema_decay: float = 0.995
    ema_every: int = 5
    ema_start: int = 1000
    num_candidates: int = 50


def softmax_q_select(
    sample_fn: Any, critic: TwinCritic, obs: torch.Tensor, act_dim: int, num_candidates: int
) -> torch.Tensor:
    """Draw ``num_candidates`` actions per state and pick one with probability softmax(min_j Q_j) per state."""
    obs_rep = repeat_obs(obs, num_candidates)
    candidates = sample_fn(obs_rep)
    q = critic.q_min(obs_rep, candidates).view(obs.shape[0], num_candidates)
    return gather_candidates(candidates.view(obs.shape[0], num_candidates, act_dim), gumbel_max(q))


def normalised_q_loss(q: torch.Tensor) -> torch.Tensor:
    """−mean Q_i / |mean Q_j|.detach() with a fair coin choosing i ∈ {1, 2} (Diffusion-QL's L_q); branch-free."""
    coin = (torch.rand((), device=q.device) < 0.5).to(q.dtype)
    numerator = coin * q[0] + (1.0 - coin) * q[1]
    denominator = coin * q[1] + (1.0 - coin) * q[0]
    return -numerator.mean() / denominator.abs().mean().detach()


class DiffusionQL(Agent):
    Config = DiffusionQLConfig
    compiled_methods = ("act", "_critic_step", "_actor_step", "_ema_step")
    config: DiffusionQLConfig
    _STATE = (
        "actor",
        "actor_ema",
        "critic",
        "critic_target",
        "actor_optimizer",
        "critic_optimizer",
        "gradient_steps",
    )

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: DiffusionQLConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        c = config
        self.actor = EpsilonMLP(obs_dim, act_dim, c.actor_hidden).to(device)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinCritic(obs_dim, act_dim, c.critic_hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.schedule = DiffusionSchedule.make(c.beta_schedule, c.diffusion_steps).to(device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, fused=True)
        self.gradient_steps = 0

    @classmethod
    def default_config(cls, task: TaskSpec) -> DiffusionQLConfig:
        return DiffusionQLConfig()

    def sample(self, obs: torch.Tensor, actor: nn.Module | None = None) -> torch.Tensor:
        return self.schedule.sample(actor or self.actor, obs, self.act_dim, clip_x0=True)

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return softmax_q_select(self.sample, self.critic_target, obs, self.act_dim, self.config.num_candidates)

    def actor_loss(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_bc + η L_q, L_bc, L_q); the critic's parameters get no gradient."""
        bc_loss = self.schedule.epsilon_loss(self.actor, actions, obs)
        self.critic.requires_grad_(False)
        q_loss = normalised_q_loss(self.critic(obs, self.sample(obs)))
        self.critic.requires_grad_(True)
        return bc_loss + self.config.eta * q_loss, bc_loss, q_loss

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Host schedule: a critic step, an actor step, and every ``ema_every`` updates from ``ema_start`` on, the
        EMA actor's step."""
        c = self.config
        batch = buffer.sample(c.batch_size)
        metrics = self._critic_step(batch)
        metrics.update(self._actor_step(batch.obs, batch.actions))
        if self.gradient_steps % c.ema_every == 0 and self.gradient_steps >= c.ema_start:
            self._ema_step()
        self.gradient_steps += 1
        return metrics

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
        actor_loss, bc_loss, q_loss = self.actor_loss(obs, actions)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        if c.grad_norm > 0:
            nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_norm)
        self.actor_optimizer.step()
        return {"actor_loss": actor_loss.detach(), "bc_loss": bc_loss.detach(), "q_loss": q_loss.detach()}

    def _ema_step(self) -> None:
        polyak_update(self.actor_ema, self.actor, 1.0 - self.config.ema_decay)

    def state_dict(self) -> dict[str, Any]:
        return agent_state(self, self._STATE)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_agent_state(self, state, self._STATE)
