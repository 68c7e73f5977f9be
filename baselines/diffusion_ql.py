"""Diffusion-QL (Wang, Hunt, Zhou; ICLR 2023), online, as the Consistency-AC repository's ``online.py --model
diffusion`` runs it, ``baselines.md`` §6.

Diffusion-QL is an offline method; its own code (``Zhendong-Wang/Diffusion-Policies-for-Offline-RL`` at
``d871f5c``) is D4RL-only. The only public *online* Diffusion-QL is the Consistency-AC repository's ``online.py
--model diffusion`` (its README: "train online RL Diffusion-QL"), which runs the Diffusion-QL policy inside the
same ``OnlineAgent`` and loop as Consistency-AC (the DIME figures show both on the dog tasks). It is the default
here (:class:`CACOnlineAgent`):

Policy: a conditional DDPM over actions, T = 5 VP steps, x̂_0 clipped to [−1, 1] at every reverse step; the
ε-network is Diffusion-QL's (16-d sinusoidal time embedding → 32 → 16, trunk 3 × 256 Mish, PyTorch's default init).

* actor loss (``agents/online_agent.py``): L_q = −E_s[Q_i(s, a_θ)] / E_s|Q_j(s, a_θ)| (detached denominator),
  (i, j) = (1, 2) or (2, 1) by a fair coin, a_θ a full reverse-chain sample with gradients through all T steps;
  no behaviour-cloning term; Adam lr 1e-5;
* critic: twin 3 × 256 Mish, y = r + γ(1 − terminated) min_j Q̄_j(s', a'), a' from an EMA copy of the actor
  (decay 0.995, refreshed every 5 updates once 1000 updates are done; before that it stays at the initial actor);
  target critics by Polyak τ = 0.005 every update; Adam lr 3e-4; global grad-norm clipping;
* action selection (acting and evaluation alike): 50 candidates per state, one drawn from softmax(min_j Q̄_j)
  (target critics, no temperature); the draw uses the Gumbel-max trick instead of ``torch.multinomial``;
* the loop (``online.py --num_envs 3``): ε-greedy exploration, ε linear from 1 to 0.01 over 3e5 env steps; one
  update every 12 env steps; replay buffer of 1e5 transitions; no uniform warm-up.

**The paper's loss as an option.** ``--set bc_term=true`` trains with the paper's eq. 5,
L(θ) = L_bc(θ) + η·L_q(θ), L_bc = E_{(s,a)~D, t, ε} ‖ε − ε_θ(√ᾱ_t a + √(1 − ᾱ_t) ε, t, s)‖² (Ho et al. eq. 14),
η = ``eta`` = 1.0 (the D4RL locomotion value). The suite's earlier online run of the offline recipe is
``--set bc_term=true actor_lr=3e-4 train_every=1 epsilon_start=0 epsilon_end=0 buffer_size=1000000
learning_starts=10000``. Observed with it (64-unit test nets): on Pendulum-v1 the policy barely improved in 8k
steps (about -1000), its samples staying near the buffer's action distribution, since |∇L_q| = |∇ₐQ|/|Q̄| is small
next to the BC gradient.

Deviations from the official code (``quantumiracle/Consistency_Model_For_Reinforcement_Learning`` at ``cdeae87``):

+------------------------------------------+----------------------------------------+----------------------------------+
| What differs from the official code      | Why                                    | Expected effect                  |
+==========================================+========================================+==================================+
| Time-limit truncations bootstrap; the    | The suite's common protocol, the same  | Small: higher value estimates    |
| official SB3 buffer                      | for every method.                      | near time limits.                |
| (``handle_timeout_termination=False``)   |                                        |                                  |
| treats them as terminal.                 |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| One env, one update every 12 env steps;  | The suite runs one env per job;        | Small: the same update budget    |
| official: 3 vector envs, one update      | updates per env step are preserved.    | and exploration rate; slightly   |
| every 4 vector steps. The ε-greedy coin  |                                        | different data correlations.     |
| is drawn per env step (official: one     |                                        |                                  |
| coin per vector step for all 3 envs).    |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Gradient-norm clip 1.0 (the agent        | No official value exists for these     | Small to moderate: the clip      |
| class's default); official: read from    | tasks; the class default is the code's | bounds early actor and critic    |
| ``online.py``'s table keyed by D4RL      | own fallback.                          | steps.                           |
| dataset names (1–10), which has no entry |                                        |                                  |
| for the study's tasks.                   |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Evaluation: 5 episodes at the study's    | One protocol for all methods (5        | None on learning; evaluation     |
| cadence on a separate env re-seeded per  | episodes, as DIME, BRO and CrossQ).    | noise slightly higher.           |
| evaluation; official: 10 episodes (D4RL  |                                        |                                  |
| ``-v2`` names) every 10k vector steps.   |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Which code produced the DIME paper's     | The offline recipe (BC + η·Q, no       | Could change results either way; |
| Diffusion-QL curves is not documented;   | exploration noise) is not an online    | the offline recipe stalled on    |
| this follows the one public online       | method; ``bc_term`` keeps it.          | Pendulum.                        |
| Diffusion-QL (the Consistency-AC         |                                        |                                  |
| repository, commit below), not the       |                                        |                                  |
| offline paper code (Diffusion-QL's own   |                                        |                                  |
| repository at d871f5c, named above).     |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Environments: Gymnasium ``-v4``/``-v5``, | One env factory for the suite; the     | Gym returns not strictly         |
| DMC and MyoSuite through                 | study's tasks are not D4RL's.          | comparable with ``-v2``/``-v3``  |
| ``dime.tasks.make_env``; official:       |                                        | numbers.                         |
| D4RL's gym ``-v2`` locomotion envs.      |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Twin critics as one batched module (two  | One batched matmul instead of two MLPs | None.                            |
| members, each with its own parameters    | (speed).                               |                                  |
| and PyTorch's init).                     |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from baselines.diffusion_utils import (
    BETA_SCHEDULES,
    CACOnlineAgent,
    CACOnlineConfig,
    DiffusionSchedule,
    EpsilonMLP,
    normalised_q_loss,
)
from dime.agents import at_least, check
from dime.tasks import TaskSpec


@dataclass
class DiffusionQLConfig(CACOnlineConfig):
    """The loop and agent settings of :class:`CACOnlineConfig`, the diffusion policy's schedule, and the paper's
    loss as an option (``bc_term``, weighted by ``eta``)."""

    diffusion_steps: int = 5
    beta_schedule: str = "vp"
    bc_term: bool = False
    eta: float = 1.0

    def validate(self) -> None:
        super().validate()
        at_least(self, 1, "diffusion_steps")
        check(self, "beta_schedule", self.beta_schedule in BETA_SCHEDULES, f"one of {', '.join(BETA_SCHEDULES)}")
        at_least(self, 0, "eta")


class DiffusionQL(CACOnlineAgent):
    Config = DiffusionQLConfig
    config: DiffusionQLConfig

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: DiffusionQLConfig, device: torch.device):
        super().__init__(task, obs_dim, act_dim, config, device)
        self.schedule = DiffusionSchedule.make(config.beta_schedule, config.diffusion_steps).to(device)

    @classmethod
    def default_config(cls, task: TaskSpec) -> DiffusionQLConfig:
        return DiffusionQLConfig()

    def build_actor(self) -> nn.Module:
        return EpsilonMLP(self.obs_dim, self.act_dim, self.config.actor_hidden)

    def sample(self, obs: torch.Tensor, actor: nn.Module | None = None) -> torch.Tensor:
        return self.schedule.sample(actor or self.actor, obs, self.act_dim, clip_x0=True)

    def actor_loss(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """−Q_i/|Q_j| (``online.py``), or with ``bc_term`` the paper's L_bc + η·L_q (then also returned apart)."""
        if not self.config.bc_term:
            return super().actor_loss(obs, actions)
        bc_loss = self.schedule.epsilon_loss(self.actor, actions, obs)
        self.critic.requires_grad_(False)
        q_loss = normalised_q_loss(self.critic(obs, self.sample(obs)))
        self.critic.requires_grad_(True)
        return {"actor_loss": bc_loss + self.config.eta * q_loss, "bc_loss": bc_loss, "q_loss": q_loss}
