"""DIPO — diffusion policy with action-gradient improvement (Yang et al., 2023), ``baselines.md`` §7.

DIPO imitates improved actions: for a minibatch (s, a) of its "diffusion memory" it moves the actions up the
critic's action gradient and trains the diffusion policy to reproduce them (the paper's Alg. 1):

1. critic: twin 3 × 256 Mish, y = r + γ(1 − terminated) min_j Q̄_j(s', a'), a' sampled from the Polyak target
   actor; Adam 3e-4 (ε = 1e-5), global grad-norm clip 2.0 (per-task, see below); τ = 0.005;
2. action gradient: 20 Adam steps (lr 0.03, ε = 1e-5) on the actions themselves ascending Σ_b min_j Q_j(s_b, a_b);
   before every step the gradient of the whole (B, A) tensor is clipped to global norm ratio·|A| (ratio 0.1);
   after every step actions are clamped to [−1, 1];
3. actor: the DDPM ε-loss (Ho et al. eq. 14) on the improved actions; T = 100 cosine steps, x̂_0 clipping;
   ε-network with 32-d sinusoidal time features (32 → 256 → 32) and a 3 × 256 Mish trunk; every layer of the
   ε-network and the critics initialised by the official ``init_weights`` (W ~ N(0, 1/(4 fan_in)), zero bias);
4. the actor target follows by Polyak τ every ``actor_target_every`` updates (1; 2 on HalfCheetah).

Per-task settings: :meth:`DIPO.default_config` applies the README's hyperparameter table to the Gym tasks it
names (grad norm 1 / 2 / 0.8 / 2 / 2, action-gradient ratio 0.3 / 0.08 / 0.1 / 0.08 / 0.1 on Hopper / Walker2d /
Ant / HalfCheetah / Humanoid; 40 action-gradient steps and actor target every 2nd update on HalfCheetah);
``main.py``'s defaults elsewhere.

**Write-back.** The paper writes the improved actions back into the diffusion memory, so that they keep improving
every time they are drawn. The official code does not: ``DiffusionMemory.replace`` copies into
``self.best_actions[idxs]``, a fancy-indexed temporary, so the memory keeps the executed actions and every update
improves them afresh; every published DIPO number comes from that behaviour, and it is the default here (the
executed actions of the replay buffer are the memory). ``--set write_back=true`` runs the paper's version: a
(capacity, A) memory aligned row-for-row with the replay buffer, whose rows start as the executed action (copied
in at the next update) and are overwritten by their improvement. The replay buffer's own actions are never
modified: the critic must see the actions that produced the stored rewards.

Acting: a reverse-chain sample with noise ratio 1; evaluation: the noise-free chain (noise ratio 0, x_T still
random), as the official ``sample_action(eval=True)``.

Deviations from the official code (``BellmanTimeHut/DIPO`` at ``c6d8d1b``):

+------------------------------------------+----------------------------------------+----------------------------------+
| What differs from the official code      | Why                                    | Expected effect                  |
+==========================================+========================================+==================================+
| Time-limit truncations bootstrap; the    | The suite's common protocol (the       | Small: higher value estimates    |
| official loop stores                     | trainer stores ``terminated`` only),   | near time limits on tasks that   |
| ``mask = 0 if done``, so a time limit is | the same for every method.             | rarely terminate.                |
| terminal.                                |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Evaluation: 5 episodes at the study's    | One protocol for all methods (5        | None on learning, except that no |
| cadence on a separate env re-seeded per  | episodes, as DIME, BRO and CrossQ) so  | training episode is cut short;   |
| evaluation; official: 10 episodes every  | IQM tables compare like with like.     | evaluation noise slightly        |
| 10k steps on the training env, which     |                                        | higher.                          |
| also ends the current training episode.  |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| One env and one update per env step, as  | The trainer's warm-up semantics        | None.                            |
| the official loop                        | (updates once env_step >               |                                  |
| (``updates_per_step = 1``); first update | learning_starts).                      |                                  |
| after env step 10 001 instead of 10 000. |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| The action-gradient minibatch is drawn   | Same rows, same uniform distribution;  | None (distributionally           |
| by the replay buffer's sampler (the      | one buffer to checkpoint.              | identical).                      |
| default memory is the replay buffer's    |                                        |                                  |
| executed actions); official: a second    |                                        |                                  |
| buffer with its own numpy RNG.           |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Environments: Gymnasium ``-v4``/``-v5``, | ``-v3`` needs mujoco-py; one env       | Gym returns not strictly         |
| DMC and MyoSuite through                 | factory for the suite.                 | comparable with the paper's      |
| ``dime.tasks.make_env``; the README      |                                        | ``-v3`` numbers.                 |
| table is keyed by the ``-v3`` names and  |                                        |                                  |
| applied to the same tasks' ports.        |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Twin critics as one batched module (two  | One batched matmul instead of two MLPs | None (same function and initial  |
| members, each with its own parameters    | (speed).                               | distribution).                   |
| and ``init_weights`` law).               |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.diffusion_utils import DIPOCodebaseAgent, DIPOCodebaseConfig, TwinCritic
from dime.agents import at_least, positive
from dime.replay import Batch, ReplayBuffer
from dime.tasks import TaskSpec

#: ``README.md``'s per-task table (Gym ``-v3`` tasks; their ``-v4``/``-v5`` ports get the same values).
README_SETTINGS: dict[str, dict[str, Any]] = {
    "Hopper": {"grad_norm": 1.0, "action_grad_ratio": 0.3},
    "Walker2d": {"grad_norm": 2.0, "action_grad_ratio": 0.08},
    "Ant": {"grad_norm": 0.8, "action_grad_ratio": 0.1},
    "HalfCheetah": {"grad_norm": 2.0, "action_grad_ratio": 0.08, "action_gradient_steps": 40, "actor_target_every": 2},
    "Humanoid": {"grad_norm": 2.0, "action_grad_ratio": 0.1},
}


@dataclass
class DIPOConfig(DIPOCodebaseConfig):
    """``main.py``'s defaults; ``write_back`` True is the paper's memory update (see the module docstring)."""

    action_lr: float = 0.03
    action_gradient_steps: int = 20
    action_grad_ratio: float = 0.1  # the action-gradient norm is clipped to ratio · |A|
    write_back: bool = False

    def validate(self) -> None:
        super().validate()
        positive(self, "action_lr")
        at_least(self, 1, "action_gradient_steps")
        at_least(self, 0, "action_grad_ratio")


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


class DIPO(DIPOCodebaseAgent):
    Config = DIPOConfig
    compiled_methods = ("act", "_critic_step", "_improve_actions", "_actor_step", "_actor_target_step")
    config: DIPOConfig
    _MEMORY_STATE = ("synced_position", "memory_rows", "memory_capacity")

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: DIPOConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        self.memory_actions: torch.Tensor | None = None  # write_back only: (capacity, A), allocated at first update
        self.synced_position = -1  # replay-buffer write position at the last sync; -1: never synced
        self.memory_rows = 0  # filled rows (the replay buffer's size at the last sync)
        self.memory_capacity = 0  # capacity of the replay buffer the memory is aligned with

    @classmethod
    def default_config(cls, task: TaskSpec) -> DIPOConfig:
        settings = README_SETTINGS.get(task.env_id.split("-")[0], {}) if task.suite == "gym" else {}
        return DIPOConfig(**settings)

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
        """Host schedule: a critic step, then the action-gradient improvement of a fresh minibatch's actions (the
        executed ones, or with ``write_back`` the memory's) and an actor step towards them."""
        c = self.config
        if c.write_back:
            self.sync_memory(buffer)
        batch = buffer.sample(c.batch_size)
        metrics = self._critic_step(batch)
        memory_batch = buffer.sample(c.batch_size)
        if c.write_back:
            improved = self.improve_memory(memory_batch.obs, memory_batch.indices)
        else:
            improved = self._improve_actions(memory_batch.obs, memory_batch.actions)
        metrics.update(self._actor_step(memory_batch.obs, improved))
        self.finish_update()
        return metrics

    def _critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Twin-critic TD step at a target-actor sample."""
        with torch.no_grad():
            next_actions = self.sample(batch.next_obs, self.actor_target)
        return self.critic_step(batch, next_actions)

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
        """One diffusion (ε-prediction) step of the actor towards the improved actions."""
        actor_loss = self.schedule.epsilon_loss(self.actor, actions, obs)
        self.actor_optimizer_step(actor_loss)
        return {"actor_loss": actor_loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), **{name: getattr(self, name) for name in self._MEMORY_STATE}}
        memory = self.memory_actions
        state["memory_actions"] = None if memory is None else memory[: self.memory_rows].cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name in self._MEMORY_STATE:
            setattr(self, name, state[name])
        memory = state["memory_actions"]
        # re-expanded to the buffer's capacity at the next sync
        self.memory_actions = None if memory is None else memory.to(self.device)
