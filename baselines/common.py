"""Pieces shared by the Gaussian-policy baselines (SAC, CrossQ, BRO): tanh-squashed Gaussian sampling, and the
log-temperature of every baseline with an entropy temperature α (also DACER).

A tanh-Gaussian policy draws u ~ N(μ, σ²) and acts with a = tanh(u). Its log-density is the change of variables

    log π(a|s) = Σ_d [ log N(u_d; μ_d, σ_d) − log(1 − tanh²(u_d)) ],

with the Jacobian term written as 2·(log 2 − u − softplus(−2u)), the overflow-free form TensorFlow Probability's
``Tanh`` bijector uses (the CrossQ/SBX and BRO references both sample through it), so no ``+1e-6`` fudge is
needed when tanh saturates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def tanh_log_det_jacobian(pre_tanh: torch.Tensor) -> torch.Tensor:
    """Σ_d log(1 − tanh²(u_d)) over the last dimension, computed as Σ_d 2·(log 2 − u_d − softplus(−2u_d))."""
    return (2.0 * (_LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)


def tanh_gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A reparameterised draw a = tanh(μ + σ·ε), ε ~ N(0, I), and its log-density log π(a|s), shape (..., A), (...).

    The Gaussian term is written with ε rather than (u − μ)/σ: the two are equal, and ε avoids a division that
    would lose precision for tiny σ. Noise comes from the global torch RNG so checkpointed runs resume exactly.
    """
    noise = torch.randn_like(mean)
    pre_tanh = mean + log_std.exp() * noise
    gaussian = (-0.5 * noise.square() - log_std - _LOG_SQRT_2PI).sum(-1)
    return torch.tanh(pre_tanh), gaussian - tanh_log_det_jacobian(pre_tanh)
