"""DIME's Gaussian-policy ablation ("dime-gauss"): DIME's critic and training with a tanh-Gaussian actor.

The paper compares DIME with "a Gaussian policy with the same implementation details" on dog-run and
humanoid-run (``baselines.md`` §14, ``study.md`` §5.4(b)). Everything but the actor is :class:`dime.dime_agent.DIME`:
categorical critic ensemble with batch renorm and the joint pass, no target networks, UTD 2, policy delay 3,
Adam(β1 = 0.5), element-wise actor gradient clipping, α tuned on the running cost. The actor's running cost is
SAC's log π(a|s) of the squashed Gaussian (terminal cost 0), so the critic bonus and actor loss are SAC's.

Deviations from the official code (``ALRhub/DIME`` at ``7082bb7``):

+------------------------------------------+----------------------------------------+----------------------------------+
| What differs from the official code      | Why                                    | Expected effect                  |
+==========================================+========================================+==================================+
| The ablation's actor is not in the       | As in DIME, the actor sees raw         | Unknown against the paper's      |
| reference code. Here: CrossQ's actor     | observations and differs from DIME     | runs; a plain Gaussian actor of  |
| size (two hidden layers of 256, ReLU,    | only in the policy class.              | the usual size.                  |
| flax init, log-std clipped to [−20, 2])  |                                        |                                  |
| without CrossQ's actor batch renorm.     |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Target entropy: SAC's −|A|               | DIME's value is calibrated to the      | A SAC-like exploration level.    |
| (``target_entropy_per_dim = −1``, α      | diffusion bound's running cost, not to |                                  |
| tuned so that mean log π → |A|) rather   | a Gaussian's log π.                    |                                  |
| than DIME's −4·|A|.                      |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Evaluation: stochastic like DIME by      | The comparison isolates the policy     | None on learning.                |
| default (``eval_deterministic=True``     | class.                                 |                                  |
| gives tanh(mean)).                       |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
| Everything else is                       | One implementation of DIME's critic    | As listed there.                 |
| :class:`dime.dime_agent.DIME` and        | and training.                          |                                  |
| inherits its deviations (PyTorch port,   |                                        |                                  |
| critic supports, Gymnasium               |                                        |                                  |
| ``-v4``/``-v5``, seeding, logging).      |                                        |                                  |
+------------------------------------------+----------------------------------------+----------------------------------+
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dime.agents import at_least, check
from dime.diffusion_policy import PolicySample, gaussian_log_density, tanh_log_det
from dime.dime_agent import DIME, DIMETrainingConfig
from dime.nn import flax_linear, mlp


@dataclass
class DIMEGaussConfig(DIMETrainingConfig):
    """DIME's training settings with a tanh-Gaussian actor of ``actor_width`` × ``actor_layers`` hidden units."""

    target_entropy_per_dim: float = -1.0
    actor_width: int = 256
    actor_layers: int = 2
    log_std_min: float = -20.0
    log_std_max: float = 2.0

    def validate(self) -> None:
        super().validate()
        at_least(self, 1, "actor_width", "actor_layers")
        check(
            self,
            "log_std_max",
            math.isfinite(self.log_std_min) and math.isfinite(self.log_std_max) and self.log_std_min < self.log_std_max,
            f"a finite number > log_std_min={self.log_std_min!r}",
        )


class TanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(μ(s), σ(s)²); running cost = log π(a|s) = log N(u) − Σ_d log(1 − tanh²u_d)."""

    def __init__(self, obs_dim: int, act_dim: int, width: int, layers: int, log_std_min: float, log_std_max: float):
        super().__init__()
        self.net = mlp(obs_dim, [width] * layers, 2 * act_dim, nn.ReLU, flax_linear)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def _mean_log_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def forward(self, obs: torch.Tensor) -> PolicySample:
        mean, log_std = self._mean_log_std(obs)
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean)
        log_prob = gaussian_log_density(u, mean, std) - tanh_log_det(u)
        return PolicySample(torch.tanh(u), log_prob, torch.zeros_like(log_prob))

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self._mean_log_std(obs)[0])


class DIMEGauss(DIME):
    """DIME with the diffusion actor swapped for :class:`TanhGaussianActor` (SAC's log π as the cost)."""

    Config = DIMEGaussConfig

    def build_actor(self) -> nn.Module:
        c = self.config
        return TanhGaussianActor(
            self.obs_dim, self.act_dim, c.actor_width, c.actor_layers, c.log_std_min, c.log_std_max
        )

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return self.actor.mode(obs) if deterministic else self.actor(obs).actions
