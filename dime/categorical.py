"""DIME's C51-style distributional critic (``dime.md`` §4): support, projection, loss and the stacked ensemble.

* :func:`c51_support`: K atoms z_j = linspace(v_min, v_max, K).
* :func:`project_distribution`: C51 projection of next-state probabilities onto the atoms after the soft Bellman
  shift, with the reference's fix for targets that land exactly on an atom (l == u).
* :func:`categorical_critic_loss`: cross-entropy to the projected target plus the 0.005·Σ p log p term that
  rewards entropy of the predicted categorical.
* :class:`DistributionalCritic`: E critics with stacked weights (one batched matmul per layer) and per-member
  batch renormalisation: BRN → Dense → ReLU → BRN → Dense → ReLU → BRN → Dense → softmax.
"""

from __future__ import annotations

import torch
from torch import nn

from dime.batch_renorm import BatchRenorm
from dime.nn import EnsembleLinear, flax_linear

LOG_EPS = 1e-15  # the reference's epsilon inside every categorical log


def c51_support(v_min: float, v_max: float, num_atoms: int = 101) -> torch.Tensor:
    """Atoms z_j = linspace(v_min, v_max, num_atoms)."""
    return torch.linspace(v_min, v_max, num_atoms)


def project_distribution(probs: torch.Tensor, target_atoms: torch.Tensor, v_min: float, v_max: float) -> torch.Tensor:
    """Project probabilities ``probs`` (..., B, K) sitting at positions ``target_atoms`` (B, K) onto the support.

    With b = (Tz − v_min)/Δz, l = ⌊b⌋, u = ⌈b⌉, mass p_j·(u − b) goes to atom l and p_j·(b − l) to atom u. When
    b is an integer (l == u) both shares would be 0 and the mass lost, so, as in the reference: if l == u and
    u > 0 then l ← l − 1; then, if still l == u (only possible at l = u = 0) and l < K − 1, u ← u + 1. Every
    row keeps total mass 1. ``target_atoms`` must already be clipped to [v_min, v_max].
    """
    num_atoms = probs.shape[-1]
    delta = (v_max - v_min) / (num_atoms - 1)
    # Clamping only absorbs float rounding at the edges (b = K − 1 + 1e-6 would index past the last atom).
    b = ((target_atoms - v_min) / delta).clamp(0.0, num_atoms - 1)
    lower, upper = b.floor(), b.ceil()
    lower = torch.where((lower == upper) & (upper > 0), lower - 1, lower)
    upper = torch.where((lower == upper) & (lower < num_atoms - 1), upper + 1, upper)
    lower_mass = probs * (upper - b)
    upper_mass = probs * (b - lower)
    lower_idx = lower.long().expand_as(probs)
    upper_idx = upper.long().expand_as(probs)
    projected = torch.zeros_like(probs)
    projected.scatter_add_(-1, lower_idx, lower_mass)
    projected.scatter_add_(-1, upper_idx, upper_mass)
    return projected


def categorical_critic_loss(probs: torch.Tensor, target: torch.Tensor, entropy_coef: float = 0.005) -> torch.Tensor:
    """Σ_c [ −mean_b Σ_j target_j log(p_c,j + ε) + entropy_coef · mean_b Σ_j p_c,j log(p_c,j + ε) ] (§4.3).

    ``probs``: (E, B, K) predicted categoricals; ``target``: (B, K), shared by all E members, no gradient.
    The second term is minus the entropy of each prediction: minimising it keeps the critic distributions wide.
    """
    log_probs = torch.log(probs + LOG_EPS)
    cross_entropy = -(target * log_probs).sum(-1).mean(-1)
    negative_entropy = (probs * log_probs).sum(-1).mean(-1)
    return (cross_entropy + entropy_coef * negative_entropy).sum()


class DistributionalCritic(nn.Module):
    """E categorical critics over concat(s, a) with stacked weights and per-member BRN statistics (§4.1).

    ``forward(obs, actions, training)`` returns probabilities (E, N, K). In CrossQ mode the caller concatenates
    (s, a) and (s', a') rows so one train-mode pass yields one joint BRN statistics update.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        v_min: float,
        v_max: float,
        hidden: int = 2048,
        num_atoms: int = 101,
        ensemble_size: int = 2,
        brn_warmup_steps: int = 100_000,
        brn_momentum: float = 0.99,
    ):
        super().__init__()
        self.ensemble_size, self.v_min, self.v_max = ensemble_size, v_min, v_max
        self.register_buffer("atoms", c51_support(v_min, v_max, num_atoms))
        widths = [obs_dim + act_dim, hidden, hidden]
        self.norms = nn.ModuleList(
            BatchRenorm(w, ensemble_size, momentum=brn_momentum, warmup_steps=brn_warmup_steps) for w in widths
        )
        self.linears = nn.ModuleList(
            EnsembleLinear(ensemble_size, w_in, w_out, init=flax_linear)
            for w_in, w_out in zip(widths, [hidden, hidden, num_atoms], strict=True)
        )

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, training: bool) -> torch.Tensor:
        h = torch.cat([obs, actions], dim=-1).expand(self.ensemble_size, -1, -1)
        for i, (norm, linear) in enumerate(zip(self.norms, self.linears, strict=True)):
            h = linear(norm(h, training))
            if i < len(self.linears) - 1:
                h = torch.relu(h)
        return torch.softmax(h, dim=-1)

    def expected_value(self, probs: torch.Tensor) -> torch.Tensor:
        """Q = Σ_j p_j z_j for probabilities (..., K)."""
        return probs @ self.atoms
