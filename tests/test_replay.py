"""Replay buffer: FIFO storage, uniform sampling, exact save/restore."""

import numpy as np
import pytest
import torch

from dime.replay import ReplayBuffer


def filled(capacity=5, n=7, seed=0):
    buffer = ReplayBuffer(obs_dim=2, act_dim=1, capacity=capacity, device="cpu", seed=seed)
    for i in range(n):
        buffer.add(np.full(2, i), np.full(1, -i), float(i), np.full(2, i + 1), terminated=(i % 3 == 0))
    return buffer


def test_fifo_overwrites_oldest():
    buffer = filled(capacity=5, n=7)
    assert len(buffer) == 5 and buffer.position == 2
    assert sorted(buffer.rewards.tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert buffer.obs.dtype == torch.float32


def test_sample_returns_consistent_rows():
    buffer = filled(capacity=10, n=10)
    batch = buffer.sample(64)
    assert batch.obs.shape == (64, 2) and batch.actions.shape == (64, 1) and batch.rewards.shape == (64,)
    torch.testing.assert_close(batch.next_obs[:, 0], batch.obs[:, 0] + 1)
    torch.testing.assert_close(batch.actions[:, 0], -batch.rewards)
    torch.testing.assert_close(batch.terminated, (batch.rewards % 3 == 0).float())
    assert set(batch.indices.tolist()) <= set(range(10))


def test_sampling_is_roughly_uniform():
    buffer = filled(capacity=4, n=4)
    counts = torch.bincount(buffer.sample(40_000).indices, minlength=4).float()
    assert torch.allclose(counts / 40_000, torch.full((4,), 0.25), atol=0.01)


def test_state_dict_round_trip_continues_the_same_stream():
    buffer = filled(capacity=5, n=7, seed=3)
    buffer.sample(8)
    state = buffer.state_dict()
    restored = ReplayBuffer(obs_dim=2, act_dim=1, capacity=5, device="cpu", seed=99)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.sample(16).obs, buffer.sample(16).obs)


def test_larger_capacity_restore_keeps_every_row_oldest_first():
    state = filled(capacity=5, n=7).state_dict()
    bigger = ReplayBuffer(obs_dim=2, act_dim=1, capacity=8, device="cpu")
    bigger.load_state_dict(state)
    assert bigger.rewards[:5].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0] and bigger.position == 5


def test_empty_buffer_refuses_to_sample():
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(2, 1, 4, "cpu").sample(1)
