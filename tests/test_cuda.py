"""CUDA only (``pytest -m gpu``; skipped, with the reason listed, where no CUDA device is visible): state and
training runs move between the CPU and a GPU. The compiled-vs-eager and host-sync checks on CUDA are the
``cuda-*`` cases of ``tests/test_compilation.py``; ``benchmarks/gpu_check.py`` runs all of them, with or without
pytest."""

from __future__ import annotations

import pytest
import torch

from dime.agents import ALGORITHMS
from dime.replay import ReplayBuffer
from tests.compile_checks import check_state_crosses_devices, check_training_resumes_across_devices
from tests.test_compilation import NEEDS_CUDA


def needs_cuda(test):
    for mark in NEEDS_CUDA:
        test = mark(test)
    return test


DIRECTIONS = [pytest.param("cuda", "cpu", id="cuda-to-cpu"), pytest.param("cpu", "cuda", id="cpu-to-cuda")]


@pytest.mark.parametrize(("source", "target"), DIRECTIONS)
@pytest.mark.parametrize("algo", list(ALGORITHMS))
@needs_cuda
def test_agent_state_moves_between_devices(algo: str, source: str, target: str):
    check_state_crosses_devices(algo, source, target)


@pytest.mark.parametrize(("first", "second"), DIRECTIONS)
@needs_cuda
def test_training_run_resumes_on_the_other_device(tmp_path, first: str, second: str):
    check_training_resumes_across_devices(tmp_path, first, second)


def test_replay_buffer_saved_on_cuda_loads_on_the_cpu():
    """A CUDA generator state (16 bytes of Philox seed and offset) cannot seed the CPU's Mersenne Twister: the
    buffer continues with a stream derived from it, the same one every time (here on the CPU, with a state of the
    CUDA layout)."""
    source = ReplayBuffer(3, 1, 10, "cpu")
    for i in range(5):
        source.add([i, i, i], [0.5], 1.0, [i + 1, i, i], False)
    state = {**source.state_dict(), "generator": torch.arange(16, dtype=torch.uint8)}
    draws = []
    for _ in range(2):
        target = ReplayBuffer(3, 1, 10, "cpu")
        target.load_state_dict(state)
        assert len(target) == 5 and torch.equal(target.obs[:5], source.obs[:5])
        draws.append(target.sample(8).indices)
    assert torch.equal(draws[0], draws[1])
