"""Network building blocks shared by the agents: flax-style initialisation and plain MLPs.

The DIME and CrossQ references are Flax code; their Dense layers start from a truncated lecun-normal kernel and a
zero bias (``dime.md`` §3.5, §8.2), unlike PyTorch's default kaiming-uniform. ``flax_linear`` reproduces that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

# std of a unit normal truncated to [-2, 2]; flax divides by it so the truncated draw keeps variance 1/fan_in.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """In-place truncated lecun-normal init of a (out, in) weight, as ``flax.linen.initializers.lecun_normal``."""
    std = math.sqrt(1.0 / weight.shape[-1]) / _TRUNCATED_NORMAL_STD
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def flax_linear(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear`` initialised like ``flax.linen.Dense`` (lecun-normal kernel, zero bias)."""
    layer = nn.Linear(in_features, out_features)
    lecun_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    activation: Callable[[], nn.Module] = nn.ReLU,
    linear: Callable[[int, int], nn.Linear] = nn.Linear,
) -> nn.Sequential:
    """Linear -> activation for each hidden width, then a linear output layer."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [linear(width, h), activation()]
        width = h
    layers.append(linear(width, out_features))
    return nn.Sequential(*layers)


def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, for parameters (buffers are copied)."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
        for t, s in zip(target.buffers(), source.buffers(), strict=True):
            t.copy_(s)


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied with one batched matmul: (E, N, in) -> (E, N, out).

    Stacking the twin critics this way replaces a Python loop over critics by a single ``baddbmm`` (LeanRL's
    vmapped ensembles, ``baselines.md`` §16.4). Each member is initialised like ``init`` would initialise an
    ``nn.Linear`` (default: PyTorch's own init).
    """

    def __init__(
        self,
        ensemble_size: int,
        in_features: int,
        out_features: int,
        init: Callable[[int, int], nn.Linear] = nn.Linear,
    ):
        super().__init__()
        members = [init(in_features, out_features) for _ in range(ensemble_size)]
        self.weight = nn.Parameter(torch.stack([m.weight.detach().T for m in members]))  # (E, in, out)
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in members]).unsqueeze(1))  # (E, 1, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # the same input for every member
            x = x.unsqueeze(0).expand(self.weight.shape[0], -1, -1)
        return torch.baddbmm(self.bias, x, self.weight)


def log_temperature(alpha: float) -> float:
    """log α for a temperature α >= 0, with log 0 = −inf: exp(−inf) is exactly 0, so a fixed α = 0 (the
    "no entropy" ablation) trains with α = 0 rather than falling back to a default."""
    return math.log(alpha) if alpha > 0 else -math.inf
