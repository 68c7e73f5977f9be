"""DIPO — diffusion policy with action-gradient improvement (Yang et al., 2023), ``baselines.md`` §7.

DIPO keeps a second buffer of (s, a) pairs, the "diffusion memory", whose actions it improves in place and which
the diffusion policy imitates (the paper's Alg. 1):

1. critic: twin 3 × 256 Mish, y = r + γ(1 − terminated) min_j Q̄_j(s', a'), a' sampled from the EMA target
   actor (τ = 0.005 every update); Adam 3e-4 (ε = 1e-5), global grad-norm clip 2.0;
2. action gradient: for a minibatch (s, a) of the diffusion memory, 20 Adam steps (lr 0.03, ε = 1e-5) on the
   actions themselves ascending Σ_b min_j Q_j(s_b, a_b); before every step the gradient of the whole (B, A)
   tensor is clipped to global norm 0.1·|A|; after every step actions are clamped to [−1, 1]; the improved
   actions are written back to the memory rows they came from;
3. actor: the DDPM ε-loss (Ho et al. eq. 14) on the improved actions; T = 100 cosine steps, x̂_0 clipping;
   ε-network with 32-d sinusoidal time features (32 → 256 → 32) and a 3 × 256 Mish trunk.

Acting: a reverse-chain sample with noise ratio 1; evaluation: the noise-free chain (noise ratio 0, x_T still
random), 10 episodes, as in the official code.

The diffusion memory here is a (capacity, A) tensor aligned row-for-row with the shared replay buffer: rows the
trainer writes are copied in (the executed action) at the next update, so each memory row starts from the action
taken and is then improved in place. The replay buffer's own ``actions`` are never modified: the critic must see
the actions that produced the stored rewards (the official code also keeps two buffers).

Deviations and choices (common protocol):

* time-limit truncations bootstrap (official: ``mask = 0 if done``, so truncation is terminal);
* evaluation runs on the trainer's separate eval env and does not cut the training episode short (the official
  code evaluates on the training env object and then forces ``done = True``);
* the diffusion-memory minibatch is drawn by the replay buffer's sampler (uniform over the same rows), the
  official code draws it from its own buffer with the same distribution.
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
    load_agent_state,
    twin_critic_step,
)
from dime.agents import Agent, AgentConfig
from dime.nn import polyak_update
from dime.replay import Batch, ReplayBuffer
from dime.tasks import TaskSpec


@dataclass
class DIPOConfig(AgentConfig):
    learning_starts: int = 10_000
    eval_episodes: int = 10
    eval_deterministic: bool = True  # noise-free reverse chain
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
    action_lr: float = 0.03
    action_gradient_steps: int = 20
    action_grad_ratio: float = 0.1  # the action-gradient norm is clipped to ratio · |A|
    noise_ratio: float = 1.0


def improve_actions(
    critic: TwinCritic,
    obs: torch.Tensor,
    actions: torch.Tensor,
    steps: int,
    lr: float,
    max_norm: float,
    eps: float = 1e-5,
) -> torch.Tensor:
    """DIPO's action gradient: ``steps`` Adam ascent steps on Σ min_j Q_j(s, a) over the action tensor itself.

    Adam (β = (0.9, 0.999)) is written out so that no optimiser object is built per update; the whole-tensor
    gradient is clipped to ``max_norm`` before each step and the actions are clamped to [−1, 1] after it.
    """
    a = actions.detach().clone()
    m = torch.zeros_like(a)
    v = torch.zeros_like(a)
    beta1, beta2 = 0.9, 0.999
    for k in range(1, steps + 1):
        a.requires_grad_(True)
        (grad,) = torch.autograd.grad(-critic(obs, a).min(0).values.sum(), a)
        a = a.detach()
        if max_norm > 0:
            grad = grad * (max_norm / (torch.linalg.vector_norm(grad) + 1e-6)).clamp(max=1.0)
        m.lerp_(grad, 1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        step_size = lr / (1.0 - beta1**k)
        denom = (v / (1.0 - beta2**k)).sqrt_().add_(eps)
        a = (a - step_size * m / denom).clamp(-1.0, 1.0)
    return a


class DIPO(Agent):
    Config = DIPOConfig
    compiled_methods = ("act", "_critic_step", "_improve_actions", "_actor_step")
    config: DIPOConfig
    _STATE = (
        "actor",
        "actor_target",
        "critic",
        "critic_target",
        "actor_optimizer",
        "critic_optimizer",
        "gradient_steps",
        "synced_position",
    )

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: DIPOConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        c = config
        self.actor = EpsilonMLP(obs_dim, act_dim, c.actor_hidden, c.time_dim, c.time_hidden, c.time_dim).to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinCritic(obs_dim, act_dim, c.critic_hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.schedule = DiffusionSchedule.make(c.beta_schedule, c.diffusion_steps).to(device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, eps=c.adam_eps, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, eps=c.adam_eps, fused=True)
        self.memory_actions: torch.Tensor | None = None  # (capacity, A), allocated at the first update
        self.synced_position = -1  # replay-buffer write position at the last sync; -1: never synced
        self.memory_rows = 0  # filled rows (the replay buffer's size at the last sync)
        self.memory_capacity = 0  # capacity of the replay buffer the memory is aligned with
        self.gradient_steps = 0

    @classmethod
    def default_config(cls, task: TaskSpec) -> DIPOConfig:
        return DIPOConfig()

    def sample(self, obs: torch.Tensor, actor: nn.Module | None = None, noise_ratio: float | None = None):
        ratio = self.config.noise_ratio if noise_ratio is None else noise_ratio
        return self.schedule.sample(actor or self.actor, obs, self.act_dim, clip_x0=True, noise_ratio=ratio)

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return self.sample(obs, noise_ratio=0.0 if deterministic else None)

    def sync_memory(self, buffer: ReplayBuffer) -> None:
        """Copy the executed actions of rows written since the last update into the diffusion memory."""
        if self.memory_actions is None or self.memory_actions.shape[0] != buffer.capacity:
            self._allocate_memory(buffer)
        assert self.memory_actions is not None
        if self.synced_position < 0:
            self.memory_actions[: buffer.size] = buffer.actions[: buffer.size]
        else:
            count = (buffer.position - self.synced_position) % buffer.capacity
            rows = torch.arange(self.synced_position, self.synced_position + count, device=buffer.device)
            rows = rows % buffer.capacity
            self.memory_actions[rows] = buffer.actions[rows]
        self.synced_position = buffer.position
        self.memory_rows = buffer.size
        self.memory_capacity = buffer.capacity

    def _allocate_memory(self, buffer: ReplayBuffer) -> None:
        """Full-capacity memory; rows restored from a checkpoint are laid out as the replay buffer lays out its
        own when a run resumes with another capacity (oldest first)."""
        restored = self.memory_actions
        self.memory_actions = torch.zeros_like(buffer.actions)
        if restored is None:
            return
        n = restored.shape[0]
        if self.memory_capacity != buffer.capacity:
            full = n == self.memory_capacity
            order = torch.roll(torch.arange(n), -self.synced_position) if full else torch.arange(n)
            restored = restored[order.to(restored.device)]
            self.synced_position = n % buffer.capacity
        self.memory_actions[:n] = restored

    def improve_memory(self, obs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Action-gradient step on the memory rows ``indices``; writes the improved actions back and returns them.

        The gather and the write-back stay on the host: the memory is reallocated when the replay buffer's capacity
        changes, so it is no fixed input of a compiled step."""
        assert self.memory_actions is not None
        improved = self._improve_actions(obs, self.memory_actions[indices])
        self.memory_actions[indices] = improved
        return improved

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Host schedule: sync the diffusion memory, a critic step, then the action-gradient improvement of a fresh
        minibatch's memory actions and an actor step towards them."""
        c = self.config
        self.sync_memory(buffer)
        batch = buffer.sample(c.batch_size)
        metrics = self._critic_step(batch)
        memory_batch = buffer.sample(c.batch_size)
        improved = self.improve_memory(memory_batch.obs, memory_batch.indices)
        metrics.update(self._actor_step(memory_batch.obs, improved))
        self.gradient_steps += 1
        return metrics

    def _critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Twin-critic TD step at a target-actor sample."""
        c = self.config
        with torch.no_grad():
            next_actions = self.sample(batch.next_obs, self.actor_target)
        return twin_critic_step(
            self.critic, self.critic_target, self.critic_optimizer, batch, next_actions, c.gamma, c.tau, c.grad_norm
        )

    def _improve_actions(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """:func:`improve_actions` with the critic's parameters frozen."""
        c = self.config
        self.critic.requires_grad_(False)
        improved = improve_actions(
            self.critic, obs, actions, c.action_gradient_steps, c.action_lr, c.action_grad_ratio * self.act_dim
        )
        self.critic.requires_grad_(True)
        return improved

    def _actor_step(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """One diffusion (ε-prediction) step of the actor towards the improved actions, then the actor target's
        Polyak step."""
        c = self.config
        actor_loss = self.schedule.epsilon_loss(self.actor, actions, obs)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        if c.grad_norm > 0:
            nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_norm)
        self.actor_optimizer.step()
        polyak_update(self.actor_target, self.actor, c.tau)
        return {"actor_loss": actor_loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        state = agent_state(self, (*self._STATE, "memory_rows", "memory_capacity"))
        memory = self.memory_actions
        state["memory_actions"] = None if memory is None else memory[: self.memory_rows].cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_agent_state(self, state, (*self._STATE, "memory_rows", "memory_capacity"))
        memory = state["memory_actions"]
        # re-expanded to the buffer's capacity at the next sync
        self.memory_actions = None if memory is None else memory.to(self.device)
