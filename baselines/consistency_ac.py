"""Consistency-AC (Ding & Jin; ICLR 2024), online, as its repository's ``online.py --model consistency`` runs it.

Policy: a consistency model (Song et al. 2023) over actions, conditioned on the state,

    f_θ(x, σ, s) = c_skip(σ)·x + c_out(σ)·F_θ(x, σ, s),
    c_skip(σ) = σ_d² / ((σ − σ_min)² + σ_d²),   c_out(σ) = σ_d (σ − σ_min) / √(σ² + σ_d²),

with σ_d = 0.5 and σ_min = 0.002, so that the boundary condition f_θ(x, σ_min, s) = x holds exactly (Song et al.
eq. 7). F_θ is the Diffusion-QL ε-MLP (16 → 32 → 16 time MLP, 3 × 256 Mish, PyTorch's default init) fed with σ
itself as its "time". Multistep consistency sampling (Song et al. Alg. 1) over the N = 5 noise levels
σ_1 < … < σ_N spaced linearly in [2, 80] (the official code's grid):

    x ~ N(0, σ_N² I),  a ← f_θ(x, σ_N);   for n = N−1 … 1:  x ← a + √(σ_n² − σ_min²)·z,  a ← f_θ(x, σ_n),

and the final a is clipped to [−1, 1]. Gradients flow through every evaluation of f_θ.

The agent is the repository's ``OnlineAgent`` (:class:`CACOnlineAgent`, shared with Diffusion-QL):

* actor loss (online RL: no consistency/BC term): L = −E Q_i(s, a_θ) / |E Q_j(s, a_θ)|.detach() with a fair
  coin choosing (i, j) ∈ {(1, 2), (2, 1)} (Diffusion-QL's normalisation); Adam lr 1e-5 (every row of
  ``online.py``'s table);
* critic: twin 3 × 256 Mish, y = r + γ(1 − terminated) min_j Q̄_j(s', a'), a' from an EMA actor (decay 0.995,
  every 5 updates from update 1000 on); Polyak τ = 0.005; Adam lr 3e-4; global grad-norm clipping;
* action selection (acting and evaluation): 50 candidates, one drawn from softmax(min_j Q̄_j);
* the loop of ``online.py`` with ``--num_envs 3`` (README), per env step: ε-greedy exploration with ε linear from 1
  to 0.01 over 3e5 env steps (10% of the default 1e6 vector steps), then 0.01; one update every 12 env steps (every
  4th step of 3 vector envs); replay buffer of 1e5 transitions; no uniform warm-up (``learning_starts`` 0, ε ≈ 1
  makes the first steps random anyway). Evaluation never takes ε-random actions.

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
| for the study's tasks (a ``KeyError`` as |                                        |                                  |
| written).                                |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Evaluation: 5 episodes at the study's    | One protocol for all methods (5        | None on learning; evaluation     |
| cadence on a separate env re-seeded per  | episodes, as DIME, BRO and CrossQ).    | noise slightly higher.           |
| evaluation; official: 10 episodes (D4RL  |                                        |                                  |
| ``-v2`` names) every 10k vector steps.   |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| The softmax(Q) draw uses the Gumbel-max  | No host synchronisation (compiled      | None (the same distribution).    |
| trick instead of ``torch.multinomial``.  | acting).                               |                                  |
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

import math
from dataclasses import dataclass

import torch
from torch import nn

from baselines.diffusion_utils import CACOnlineAgent, CACOnlineConfig, EpsilonMLP
from dime.agents import at_least, check, positive
from dime.tasks import TaskSpec


@dataclass
class ConsistencyACConfig(CACOnlineConfig):
    """The loop and agent settings of :class:`CACOnlineConfig` and the consistency model's noise grid."""

    num_steps: int = 5
    sigma_min: float = 0.002
    sigma_low: float = 2.0
    sigma_max: float = 80.0
    sigma_data: float = 0.5

    def validate(self) -> None:
        super().validate()
        at_least(self, 1, "num_steps")
        positive(self, "sigma_min", "sigma_data")
        check(
            self, "sigma_low", self.sigma_min < self.sigma_low <= self.sigma_max, "a number in (sigma_min, sigma_max]"
        )


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


class ConsistencyAC(CACOnlineAgent):
    Config = ConsistencyACConfig
    config: ConsistencyACConfig

    @classmethod
    def default_config(cls, task: TaskSpec) -> ConsistencyACConfig:
        return ConsistencyACConfig()

    def build_actor(self) -> nn.Module:
        return ConsistencyPolicy(self.obs_dim, self.act_dim, self.config)

    def sample(self, obs: torch.Tensor, actor: nn.Module | None = None) -> torch.Tensor:
        return (actor or self.actor)(obs)
