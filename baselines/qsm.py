"""Q-Score Matching (Psenka, Escontrela, Abbeel, Ma; ICML 2024), ``baselines.md`` §5.

The policy is a conditional DDPM over actions whose ε-network is not trained to denoise data but to match the
action gradient of the critic at noisy actions (the paper's Alg. 1, "Q-score matching"):

* actor loss  L(θ) = E_{(s,a)~D, t~U{0..T−1}, ε} ‖ε_θ(s, ã_t, t) − (−M_q ∇ₐ Q̄(s, ã_t))‖²,
  ã_t = √ᾱ_t a + √(1 − ᾱ_t) ε, Q̄ = ½(Q₁ + Q₂) (the mean of the two critics' action gradients), stop-gradient;
  since ε_θ ≈ −σ_t ∇ log p_t, this makes the policy's score point along ∇ₐQ;
* critic: TD3-like, y = r + γ(1 − terminated) min_j Q̄_j(s', a'), a' = clip(DDPM sample + N(0, 0.1²));
  no entropy term; Polyak τ = 0.005; the actor and critic use the same minibatch, one step each per env step;
* sampler: T = 5 VP steps in the ε form x_{t−1} = (x_t − β_t/√(1 − ᾱ_t) ε̂)/√α_t + √β_t z, every intermediate
  sample clipped to [−1, 1];
* acting: DDPM sample + N(0, 0.1²) exploration noise; evaluation: the plain DDPM sample (a stochastic policy,
  ``baselines.md`` §15);
* networks: ε-MLP (512, 512) Mish with learnable Fourier time features (64, kernel ~ N(0, 0.2²)) and a (128, 128)
  time encoder; critics (512, 512) ReLU; every dense layer initialised as jaxrl5's ``default_init``
  (Glorot/Xavier uniform, zero bias); Adam 3e-4 with the actor lr cosine-decayed to 0 over 2M actor updates
  (optax's ``cosine_decay_schedule``); 10k uniform warm-up steps.

M_q is 50 (the official config), and 120 on the DMC humanoid and quadruped domains: the README's advice
("for more difficult tasks like quadruped_walk and humanoid_walk, a more aggressive M_q = 120 may perform
better"). The dog tasks keep 50: the README does not name them and they are not the official code's default;
``--set m_q=120`` is the extrapolation to them.

Deviations from the official code (``Alescontrela/score_matching_rl`` at ``2e77893``):

+------------------------------------------+----------------------------------------+----------------------------------+
| What differs from the official code      | Why                                    | Expected effect                  |
+==========================================+========================================+==================================+
| Evaluation: 5 episodes at the study's    | One protocol for all methods (5        | None on learning; evaluation     |
| cadence on a separate env re-seeded per  | episodes, as DIME, BRO and CrossQ):    | noise lower than the official    |
| evaluation; official: 1 episode every    | one episode of a stochastic policy     | one.                             |
| 10k steps.                               | makes the IQM tables noisy.            |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| The DMC env seed follows the run seed;   | Seeds must differ between runs for     | None on average.                 |
| official: ``dmc2gym.make(..., seed=1)``  | independent samples.                   |                                  |
| for every run. No wandb video wrapper.   |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| DMC through shimmy                       | One env factory for the suite.         | None expected on DMC (same       |
| (``dime.tasks.make_env``) instead of     |                                        | tasks, same 1000-step limit, no  |
| dmc2gym; Gym and MyoSuite (which the     |                                        | action repeat).                  |
| official script cannot run) through the  |                                        |                                  |
| same factory. Time limits bootstrap in   |                                        |                                  |
| both codes.                              |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| M_q = 120 on DMC humanoid and quadruped  | The README recommends it for these     | Could change results on those 3  |
| tasks (the README's advice), 50          | domains.                               | study tasks (humanoid).          |
| elsewhere; official config: 50           |                                        |                                  |
| everywhere unless changed by hand.       |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| ``utd_ratio`` (a batch multiplier, 1 by  | Identical at the default.              | None.                            |
| default) is not a setting: one update of |                                        |                                  |
| batch 256 per env step.                  |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Twin critics as one batched module (two  | One batched matmul instead of an       | None.                            |
| members, each with its own parameters    | ensemble of flax modules (speed).      |                                  |
| and Xavier init).                        |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from baselines.diffusion_utils import (
    BETA_SCHEDULES,
    DiffusionSchedule,
    EpsilonMLP,
    TwinCritic,
    agent_state,
    load_agent_state,
    twin_critic_step,
    xavier_linear,
)
from dime.agents import Agent, AgentConfig, at_least, check, nonempty_widths, positive, unit_interval
from dime.replay import Batch, ReplayBuffer
from dime.tasks import TaskSpec


@dataclass
class QSMConfig(AgentConfig):
    learning_starts: int = 10_000
    eval_deterministic: bool = True  # "deterministic" = no exploration noise; the DDPM sample stays stochastic
    actor_hidden: tuple[int, ...] = (512, 512)
    time_dim: int = 64
    time_hidden: int = 128
    critic_hidden: tuple[int, ...] = (512, 512)
    diffusion_steps: int = 5
    beta_schedule: str = "vp"
    m_q: float = 50.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    actor_lr_decay_steps: int = 2_000_000  # cosine decay to 0 over this many actor updates; 0 disables it
    tau: float = 0.005
    exploration_noise: float = 0.1
    target_noise: float = 0.1

    def validate(self) -> None:
        super().validate()
        nonempty_widths(self, "actor_hidden", "critic_hidden")
        check(self, "time_dim", self.time_dim >= 2 and self.time_dim % 2 == 0, "an even number >= 2")
        at_least(self, 1, "time_hidden", "diffusion_steps")
        check(self, "beta_schedule", self.beta_schedule in BETA_SCHEDULES, f"one of {', '.join(BETA_SCHEDULES)}")
        positive(self, "actor_lr", "critic_lr")
        at_least(self, 0, "m_q", "actor_lr_decay_steps", "exploration_noise", "target_noise")
        unit_interval(self, "tau")


class QSM(Agent):
    Config = QSMConfig
    compiled_methods = ("act", "_critic_step", "_actor_backward")
    config: QSMConfig
    _STATE = ("actor", "critic", "critic_target", "actor_optimizer", "critic_optimizer", "gradient_steps")

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: QSMConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        c = config
        self.actor = EpsilonMLP(
            obs_dim,
            act_dim,
            c.actor_hidden,
            c.time_dim,
            c.time_hidden,
            c.time_hidden,
            embedding="fourier",
            linear=xavier_linear,
        ).to(device)
        self.critic = TwinCritic(obs_dim, act_dim, c.critic_hidden, activation=F.relu, linear=xavier_linear).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.schedule = DiffusionSchedule.make(c.beta_schedule, c.diffusion_steps).to(device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, fused=True)
        self.gradient_steps = 0

    @classmethod
    def default_config(cls, task: TaskSpec) -> QSMConfig:
        domain = task.name.removeprefix("dmc/").split("-")[0]
        readme_hard = task.suite == "dmc" and domain in ("humanoid", "quadruped")
        return QSMConfig(m_q=120.0 if readme_hard else 50.0)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """The DDPM policy sample (QSM's sampler: ε-form mean, σ_t² = β_t, per-step clipping)."""
        return self.schedule.sample(self.actor, obs, self.act_dim, clip_x0=False, clip_sample=True, variance="beta")

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        actions = self.sample(obs)
        if deterministic:
            return actions
        return (actions + self.config.exploration_noise * torch.randn_like(actions)).clamp(-1.0, 1.0)

    def score_target(self, obs: torch.Tensor, noisy_actions: torch.Tensor) -> torch.Tensor:
        """−M_q ∇ₐ Q̄(s, ã) with Q̄ the mean of the twin critics, detached (the regression target of ε_θ)."""
        actions = noisy_actions.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.critic(obs, actions).mean(0).sum(), actions)
        return -self.config.m_q * grad

    def actor_loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        t = torch.randint(0, self.schedule.num_steps, (obs.shape[0],), device=obs.device)
        noisy = self.schedule.q_sample(actions, t, torch.randn_like(actions))
        target = self.score_target(obs, noisy)
        return (self.actor(noisy, t.float(), obs) - target).pow(2).mean()

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Host schedule: one critic step, then one actor step at the cosine-decayed learning rate.

        The actor's optimiser step runs here, outside the compiled step function: its learning rate changes every
        update, and a compiled optimiser step would be recompiled for every new float value.
        """
        c = self.config
        batch = buffer.sample(c.batch_size)
        metrics = self._critic_step(batch)
        if c.actor_lr_decay_steps > 0:
            progress = min(self.gradient_steps, c.actor_lr_decay_steps) / c.actor_lr_decay_steps
            for group in self.actor_optimizer.param_groups:
                group["lr"] = c.actor_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        metrics.update(self._actor_backward(batch.obs, batch.actions))
        self.actor_optimizer.step()
        self.gradient_steps += 1
        return metrics

    def _critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Twin-critic TD step at a target-smoothed (TD3-style noisy) sample of the current actor."""
        c = self.config
        with torch.no_grad():
            next_actions = self.sample(batch.next_obs)
            next_actions = (next_actions + c.target_noise * torch.randn_like(next_actions)).clamp(-1.0, 1.0)
        return twin_critic_step(
            self.critic, self.critic_target, self.critic_optimizer, batch, next_actions, c.gamma, c.tau
        )

    def _actor_backward(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The Q-score-matching loss and its gradient (the optimiser step is the host's, see :meth:`update`)."""
        actor_loss = self.actor_loss(obs, actions)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        return {"actor_loss": actor_loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        return agent_state(self, self._STATE)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_agent_state(self, state, self._STATE)
