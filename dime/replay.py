"""FIFO replay buffer resident on the training device.

Stores flattened float32 transitions ``(s, a, r, s', terminated)`` with ``a`` in [-1, 1]^A and ``s'`` the true
next observation (also at episode ends). Only ``terminated`` is stored: time-limit truncations bootstrap.
Sampling is uniform with replacement over the filled part, from the buffer's own ``torch.Generator`` so that a
checkpointed run resumes with the same minibatches.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import numpy as np
import torch

_COLUMNS = ("obs", "next_obs", "actions", "rewards", "terminated")


class Batch(NamedTuple):
    obs: torch.Tensor  # (B, O)
    actions: torch.Tensor  # (B, A)
    rewards: torch.Tensor  # (B,)
    next_obs: torch.Tensor  # (B, O)
    terminated: torch.Tensor  # (B,) float, 1.0 only for true terminations
    indices: torch.Tensor  # (B,) rows in the buffer (DIPO writes improved actions back)


class ReplayBuffer:
    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device: torch.device | str, seed: int = 0):
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.obs = torch.zeros((self.capacity, obs_dim), dtype=torch.float32, device=self.device)
        self.next_obs = torch.zeros_like(self.obs)
        self.actions = torch.zeros((self.capacity, act_dim), dtype=torch.float32, device=self.device)
        self.rewards = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
        self.position = 0
        self.size = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool) -> None:
        i = self.position
        self.obs[i] = torch.as_tensor(obs, dtype=torch.float32)
        self.actions[i] = torch.as_tensor(action, dtype=torch.float32)
        self.rewards[i] = float(reward)
        self.next_obs[i] = torch.as_tensor(next_obs, dtype=torch.float32)
        self.terminated[i] = float(terminated)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` rows drawn uniformly with replacement."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)
        return Batch(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx], idx)

    def state_dict(self) -> dict[str, Any]:
        """The filled rows only, each in a storage of its own: ``torch.save`` writes a view's whole storage, so
        a view of the first rows of a 1M-row CPU buffer would save all 1M rows."""
        n = self.size
        return {
            "capacity": self.capacity,
            "position": self.position,
            "size": n,
            **{name: _filled_rows(getattr(self, name), n) for name in _COLUMNS},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved buffer. A run resumed with a longer budget may have a larger capacity than the one it
        was saved with; the rows are then laid out oldest-first, which keeps every transition."""
        if state["obs"].shape[1] != self.obs.shape[1] or state["actions"].shape[1] != self.actions.shape[1]:
            raise ValueError("replay buffer checkpoint has other observation or action sizes")
        n, position = state["size"], state["position"]
        if state["capacity"] != self.capacity:
            if n > self.capacity:
                raise ValueError(f"replay buffer checkpoint holds {n} rows, more than the capacity {self.capacity}")
            order = torch.roll(torch.arange(n), -position) if n == state["capacity"] else torch.arange(n)
            state = {**state, **{k: state[k][order] for k in _COLUMNS}}
            position = n % self.capacity
        for name in _COLUMNS:
            getattr(self, name)[:n] = state[name].to(self.device)
        self.position, self.size = position, n
        saved = state["generator"]
        if saved.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved)
        else:  # saved on another device type (CPU Mersenne Twister vs CUDA Philox): a stream seeded from that state
            self.generator.manual_seed(int.from_bytes(hashlib.sha256(saved.numpy().tobytes()).digest()[:8], "little"))


def _filled_rows(column: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows on the CPU, without a copy when they already are a whole CPU storage."""
    rows = column[:n]
    if rows.device.type != "cpu":
        return rows.cpu()  # a new, compact host tensor
    return rows if n == column.shape[0] else rows.clone()
