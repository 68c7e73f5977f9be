"""The fast path (``--compile on|cudagraphs``) against the eager reference, for every registered algorithm, on the
CPU and, where one is present, on a CUDA device (``pytest -m gpu`` runs only the CUDA cases; without CUDA they
are skipped with that reason). The checks themselves live in ``tests/compile_checks.py`` (the GPU check runs them
without pytest):

* the hot loop (replay sampling, every gradient step of an env step, action selection) never synchronises with
  the device: op by op with :class:`dime.compilation.ForbidHostSyncs` on the CPU, with
  ``torch.cuda.set_sync_debug_mode("error")`` on CUDA (eager here, compiled modes after their comparison);
* compiled and eager updates from the same state give the same metrics, actions and parameters, at each of a few
  hundred consecutive updates;
* after a warm-up that visits every phase of the schedule (policy delay, temperature steps, EMA, resets), nothing
  is recompiled, no CUDA graph is recorded again or skipped, and no state tensor moves to a new address (on the
  CPU too: that is what would make CUDA graphs record again).
"""

from __future__ import annotations

import math

import pytest
import torch

from dime.agents import ALGORITHMS
from dime.compilation import CompileEvents, ForbidHostSyncs, HostSyncError, compile_function
from dime.trainer import train
from tests.compile_checks import (
    TINY,
    addresses,
    build,
    check_compiled_matches_eager,
    check_no_host_syncs,
    flat_state,
    run_updates,
    sync_state,
)

#: Marks of every CUDA test: selected by ``pytest -m gpu``, skipped with this reason where CUDA is unavailable.
NEEDS_CUDA = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: torch.cuda.is_available() is False"),
]
COMPILED = [
    pytest.param("cpu", "on", id="cpu-on"),
    pytest.param("cuda", "on", marks=NEEDS_CUDA, id="cuda-on"),
    pytest.param("cuda", "cudagraphs", marks=NEEDS_CUDA, id="cuda-cudagraphs"),
]
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=NEEDS_CUDA, id="cuda")]


def test_every_algorithm_has_a_tiny_config():
    assert set(TINY) == set(ALGORITHMS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_hot_loop_has_no_host_syncs(algo: str, device: str):
    check_no_host_syncs(algo, device)


def test_host_sync_guard_catches_item_and_masks():
    x = torch.arange(4.0)
    for sync in (lambda: x.sum().item(), lambda: bool(x.sum() > 1), lambda: x[x > 1], lambda: torch.nonzero(x)):
        with pytest.raises(HostSyncError), ForbidHostSyncs():
            sync()
    with ForbidHostSyncs():  # integer indexing and arithmetic are fine
        x[torch.tensor([0, 2])] * 2


def test_cudagraphs_mode_needs_cuda():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        compile_function(lambda x: x, "cudagraphs", torch.device("cpu"))


def test_compile_events_count_compilations_and_recompilations():
    torch._dynamo.reset()
    double = torch.compile(lambda x: 2 * x, backend="eager")  # Dynamo only: no Inductor compilation to wait for
    events = CompileEvents()
    with events:
        double(torch.ones(3))
        double(torch.ones(3))
    assert (events.compilations, events.skips) == (1, 0)
    with events:
        double(torch.ones(3, dtype=torch.float64))  # a new dtype: recompiled
    assert events.compilations == 2 and events.total() == 2 + (events.recordings or 0)
    assert events.recordings in (0, None), "no CUDA graph without CUDA"


def test_state_sync_keeps_every_tensor_in_place():
    """The compiled-vs-eager comparison hands the compiled agent the eager state before every update; it must not
    move tensors (optimiser states included), or CUDA graphs would be recorded again at every update."""
    target, target_buffer = build("dime")
    source, source_buffer = build("dime", seed=1)
    run_updates(target, target_buffer, 0, 3)  # optimiser states exist
    run_updates(source, source_buffer, 0, 4)
    pinned = addresses(target)
    assert any(".state[" in name for name in pinned) and "log_alpha" in pinned
    sync_state(target, source)
    assert addresses(target) == pinned
    want, got = flat_state(source), flat_state(target)
    assert all(torch.equal(got[k], want[k]) for k in want) and target.critic_updates == source.critic_updates


@pytest.mark.parametrize(("device", "mode"), COMPILED)
@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_compiled_updates_match_eager_without_recompiling(algo: str, device: str, mode: str):
    check_compiled_matches_eager(algo, device, mode)


def test_training_run_compiles_and_resumes_across_modes(tmp_path):
    """A compiled run goes through the trainer (acting, evaluation at another batch shape, checkpoints), and a
    checkpoint written in one mode resumes in the other: the compile mode is not part of the run's identity."""
    overrides = {"learning_starts": 200, "hidden": [16, 16], "batch_size": 32, "eval_episodes": 1}
    common = {"algo": "sac", "task": "gym/Pendulum-v1", "seed": 0, "out_dir": tmp_path, "agent_overrides": overrides}
    first = train(**common, total_steps=400, eval_every=200, checkpoint_every=200, compile="on")
    assert first["compile"] == "on" and math.isfinite(first["final_score"])
    (tmp_path / "summary.json").unlink()
    resumed = train(**common, total_steps=600, eval_every=200, checkpoint_every=200, compile="off")
    assert resumed["compile"] == "off" and resumed["total_steps"] == 600
    eval_steps = [row.split(",")[0] for row in (tmp_path / "eval.csv").read_text().splitlines()[1:]]
    assert eval_steps == ["1", "200", "400", "600"]
