"""QVPO — Q-weighted variational policy optimisation (Ding et al., NeurIPS 2024), ``baselines.md`` §8.

The recommended mode of the official code (``python main.py --env_name … --weighted --aug``: ``q_transform =
qadv``, ``chosen = 1``), whose networks and optimisers are DIPO's (:class:`DIPOCodebaseAgent`):

* actor: for each state s of a minibatch, draw K = 64 actions from the current diffusion policy, score them with
  min(Q₁, Q₂), keep the best a* and weight its diffusion ε-loss by the advantage
  ω(s) = max(Q(s, a*) − (1/K) Σ_k Q(s, a_k), 0) (the paper's Q-weighted variational loss with the "qadv"
  transform, eqs. 9–11);
* entropy regularisation: 10 uniform actions per state join the same loss with weight α_ent(t)·ω(s); the loss is
  the mean of w·‖ε − ε_θ‖² over all (1 + 10)·B rows and all action dims. α_ent decays linearly over the run as
  the official loop sets it after every env step t: α_ent(t) = min(α₀, max(α_min, α₀(1 − t/N))), α₀ = 0.02,
  α_min = 0.002, N the run's total env steps (``--num_steps``; here the trainer's ``total_steps``, or
  ``entropy_decay_steps`` when set); it reaches α_min at 90% of the run;
* critic: twin 3 × 256 Mish, y = r + γ(1 − terminated) min_j Q̄_j(s', a'), a' the best of 4 samples of the
  Polyak target actor under the target critics; τ = 0.005 for both targets, every update;
* diffusion: T = 20 cosine steps, x̂_0 clipping, noise ratio 1; ε-network 32 → 256 → 32 time MLP, 3 × 256 Mish;
  every layer initialised by the official ``init_weights`` (W ~ N(0, 1/(4 fan_in)), zero bias);
* optimisation: Adam (ε = 1e-5), diffusion lr 1e-4, critic lr 3e-4, global grad-norm clip 2, batch 256.

Acting: best of 4 samples by min(Q₁, Q₂); evaluation: best of 32 (both with the current critics and noise
ratio 1, as in the official code).

Deviations from the official code (``wadx2019/qvpo`` at ``40a1974``):

+------------------------------------------+----------------------------------------+----------------------------------+
| What differs from the official code      | Why                                    | Expected effect                  |
+==========================================+========================================+==================================+
| Time-limit truncations bootstrap; the    | The suite's common protocol (the       | Small: higher value estimates    |
| official loop stores                     | trainer stores ``terminated`` only),   | near time limits on tasks that   |
| ``mask = 0 if done``, so a time limit is | the same for every method.             | rarely terminate.                |
| terminal.                                |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Evaluation: 5 episodes at the study's    | One protocol for all methods (5        | None on learning; evaluation     |
| cadence on a separate env re-seeded per  | episodes, as DIME, BRO and CrossQ).    | noise slightly higher.           |
| evaluation; official: 10 episodes every  |                                        |                                  |
| 10k steps on a deep copy of the training |                                        |                                  |
| env.                                     |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| The weight α_ent used by the update of   | Same schedule; the trainer, not the    | None.                            |
| env step t is the one the official loop  | agent, owns the loop.                  |                                  |
| set after step t − 1, written as a       |                                        |                                  |
| function of t (the run's first update    |                                        |                                  |
| uses α₀, as there).                      |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Without a trainer (an agent built        | The decay needs a run length; unit     | None for trainer runs.           |
| directly, ``total_steps`` None) and      | tests and scripts may have none.       |                                  |
| ``entropy_decay_steps`` unset, α_ent     |                                        |                                  |
| stays at α₀.                             |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| The official ε-greedy option             | Off in the recommended mode; the       | None.                            |
| (``--epsilon``, default 0) is not        | trainer's warm-up semantics.           |                                  |
| reproduced; first update after env step  |                                        |                                  |
| 10 001 instead of 10 000.                |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Environments: Gymnasium ``-v4``/``-v5``, | ``-v3`` needs mujoco-py; one env       | Gym returns not strictly         |
| DMC and MyoSuite through                 | factory for the suite.                 | comparable with ``-v3`` numbers. |
| ``dime.tasks.make_env``; official: gym   |                                        |                                  |
| ``-v3``.                                 |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Twin critics as one batched module (two  | One batched matmul instead of two MLPs | None (same function and initial  |
| members, each with its own parameters    | (speed).                               | distribution).                   |
| and ``init_weights`` law).               |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from baselines.diffusion_utils import (
    DIPOCodebaseAgent,
    DIPOCodebaseConfig,
    TwinCritic,
    gather_candidates,
    repeat_obs,
)
from dime.agents import at_least, check, unit_interval
from dime.replay import Batch, ReplayBuffer
from dime.tasks import TaskSpec


@dataclass
class QVPOConfig(DIPOCodebaseConfig):
    """``main.py``'s defaults with ``--weighted --aug``. ``entropy_alpha``/``entropy_alpha_min``: α₀ and α_min of
    the linear decay; ``entropy_decay_steps``: its span N in env steps (None: the run's total steps, 0: no decay).
    A run resumed with a larger budget continues the decay towards its new end, as a longer official run would
    from that step on."""

    eval_deterministic: bool = True  # best of ``eval_samples`` by Q
    diffusion_steps: int = 20
    actor_lr: float = 1e-4
    train_samples: int = 64
    behavior_samples: int = 4
    target_samples: int = 4
    eval_samples: int = 32
    entropy_samples: int = 10
    entropy_alpha: float = 0.02
    entropy_alpha_min: float = 0.002
    entropy_decay_steps: int | None = None

    def validate(self) -> None:
        super().validate()
        at_least(self, 1, "train_samples", "behavior_samples", "target_samples", "eval_samples")
        at_least(self, 0, "entropy_samples", "entropy_decay_steps")
        unit_interval(self, "entropy_alpha", "entropy_alpha_min")
        check(self, "entropy_alpha_min", self.entropy_alpha_min <= self.entropy_alpha, "a number <= entropy_alpha")


def entropy_weight(alpha: float, alpha_min: float, step: int, span: int | None) -> float:
    """The official loop's α_ent after env step ``step``: min(α₀, max(α_min, α₀(1 − step/span))); α₀ if no span."""
    if not span:
        return alpha
    return min(alpha, max(alpha_min, alpha * (1.0 - step / span)))


class QVPO(DIPOCodebaseAgent):
    Config = QVPOConfig
    compiled_methods = ("act", "_critic_step", "_actor_step", "_actor_target_step")
    config: QVPOConfig
    _STATE = (*DIPOCodebaseAgent._STATE, "entropy_alpha")

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: QVPOConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        # A device scalar refilled by ``update``: a Python float would be a constant of the compiled actor step.
        self.entropy_alpha = torch.tensor(config.entropy_alpha, device=device)

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
            weights = torch.cat([weight, self.entropy_alpha * weight.repeat(n)])
        return self.schedule.epsilon_loss(self.actor, actions, states, weights), weight.mean()

    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Host schedule: α_ent of this env step, a critic step, then an actor step on a fresh minibatch (as the
        official code samples)."""
        c = self.config
        span = c.entropy_decay_steps if c.entropy_decay_steps is not None else self.total_steps
        first = self.gradient_steps == 0  # the official loop sets α_ent only after its first update
        self.entropy_alpha.fill_(
            entropy_weight(c.entropy_alpha, c.entropy_alpha_min, 0 if first else env_step - 1, span)
        )
        metrics = self._critic_step(buffer.sample(c.batch_size))
        metrics.update(self._actor_step(buffer.sample(c.batch_size).obs))
        self.finish_update()
        return {**metrics, "entropy_alpha": self.entropy_alpha.clone()}

    def _critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Twin-critic TD step at the target actor's best-of-N sample."""
        with torch.no_grad():
            next_actions = self.best_of(
                batch.next_obs, self.config.target_samples, self.actor_target, self.critic_target
            )
        return self.critic_step(batch, next_actions)

    def _actor_step(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        actor_loss, mean_weight = self.actor_loss(obs)
        self.actor_optimizer_step(actor_loss)
        return {"actor_loss": actor_loss.detach(), "advantage_weight": mean_weight}
