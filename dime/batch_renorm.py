"""Batch Renormalisation as the CrossQ/DIME Flax code computes it (``dime.md`` §4.2), shared by DIME and CrossQ.

Train mode normalises with the batch statistics; after ``warmup_steps`` train-mode calls it applies the renorm
correction r, d (Ioffe 2017) computed against the running statistics and stop-gradiented. Eval mode uses the running
statistics only. Conventions that differ from ``torch.nn.BatchNorm1d`` and matter for fidelity:

* biased batch variance ``E[x²] − E[x]²`` clamped at 0, ε = 1e-3, r_max = 3, d_max = 5;
* Flax momentum: ``running = 0.99·running + 0.01·batch`` (running stats update from the first call);
* warm-up counted in train-mode calls (= critic updates) and applied as an arithmetic 0/1 blend, so there is no
  data-dependent Python branch (no host sync, graph-capturable);
* the mode is an argument, not ``.train()/.eval()`` state, because one update uses both (critic vs actor loss);
* the running statistics and the step counter are updated in place, so their storage never moves: CUDA graphs
  replay against fixed addresses, and a buffer reassigned every step would force a re-recording every step.
  Under ``torch.compile`` that in-place update has a trap: AOTAutograd's partitioner prefers recomputing the
  cheap renorm correction (r, d, warm-up flag) in the backward pass from the buffers, which by then hold the
  *updated* statistics (gradients ~1% off once renorm is active); the correction is therefore computed through
  :func:`dime.compilation.saved_for_backward`.

An optional leading ensemble dimension lets stacked critics keep separate statistics: input (E, N, F) with
``ensemble_size=E`` normalises each member over its own N rows.
"""

from __future__ import annotations

import torch
from torch import nn

from dime.compilation import saved_for_backward


class BatchRenorm(nn.Module):
    def __init__(
        self,
        num_features: int,
        ensemble_size: int | None = None,
        momentum: float = 0.99,
        eps: float = 1e-3,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 100_000,
    ):
        super().__init__()
        shape = (num_features,) if ensemble_size is None else (ensemble_size, 1, num_features)
        self.momentum, self.eps, self.r_max, self.d_max = momentum, eps, r_max, d_max
        self.warmup_steps = warmup_steps
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if not training:
            return (x - self.running_mean) * torch.rsqrt(self.running_var + self.eps) * self.weight + self.bias
        batch_mean = x.mean(dim=-2, keepdim=True)
        batch_var = ((x * x).mean(dim=-2, keepdim=True) - batch_mean * batch_mean).clamp_min(0.0)
        if x.dim() == 2:
            batch_mean, batch_var = batch_mean.squeeze(-2), batch_var.squeeze(-2)
        batch_mean_, batch_var_ = batch_mean.detach(), batch_var.detach()
        r, d, warmed_up = saved_for_backward(self._correction, batch_mean_, batch_var_)
        # sqrt(v) without ε as in the reference; the double `where` keeps its value and gives a zero (not NaN)
        # gradient where a feature has exactly zero batch variance.
        positive = batch_var > 0
        batch_std = torch.where(positive, batch_var, torch.ones_like(batch_var)).sqrt() * positive
        mean = batch_mean - warmed_up * d * batch_std / r
        var = batch_var * (1.0 + warmed_up * (r.pow(-2) - 1.0))
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        with torch.no_grad():
            self.running_mean.lerp_(batch_mean_, 1.0 - self.momentum)
            self.running_var.lerp_(batch_var_, 1.0 - self.momentum)
            self.steps.add_(1)
        return y

    def _correction(
        self, batch_mean: torch.Tensor, batch_var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Renorm correction r, d against the running statistics (constants for autograd) and the 0/1 warm-up flag."""
        running_std = torch.sqrt(self.running_var + self.eps)
        r = (torch.sqrt(batch_var + self.eps) / running_std).clamp(1.0 / self.r_max, self.r_max)
        d = ((batch_mean - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
        return r, d, (self.steps >= self.warmup_steps).to(batch_mean.dtype)
