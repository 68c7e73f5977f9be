"""Compiled updates against the eager reference, for every algorithm on any device: the machinery behind
``tests/test_compilation.py`` (CPU and CUDA), ``tests/test_cuda.py`` and ``benchmarks/gpu_check.py``.

It imports neither pytest nor anything beyond torch, numpy and this repository, so the GPU check runs the same
checks on a GPU node whose Python has no pytest. Every check raises ``AssertionError`` with a message naming the
algorithm, mode and update where it failed.

* :func:`check_compiled_matches_eager`: before every update the compiled agent takes the eager agent's exact state
  (without moving any of its tensors: CUDA graphs replay against fixed addresses) and the same RNG seed, so each
  comparison measures one update's compiled-vs-eager error rather than the chaotic growth of rounding
  differences. After a warm-up that visits every phase of the schedule (policy delay, temperature steps, EMA,
  resets), nothing may be recompiled, no CUDA graph may be recorded again or skipped, and no tensor the compiled
  code reads (parameters, buffers, optimiser states, tensor attributes) may move to a new address.
* :func:`check_no_host_syncs`: the hot loop (replay sampling, every gradient step of an env step, action
  selection) never waits for the device; op by op with :class:`dime.compilation.ForbidHostSyncs` on the CPU,
  with ``torch.cuda.set_sync_debug_mode("error")`` on CUDA (compiled modes: after the comparison above).
* :func:`check_state_crosses_devices`: an agent and its replay buffer saved on one device continue on another;
  :func:`check_training_resumes_across_devices`: so does a training run, through its checkpoint.

Networks are tiny so that compiling every algorithm stays within the CI budget; the code paths are the paper's.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._dynamo
from torch import nn

from dime.agents import Agent, load_algorithm
from dime.compilation import CompileEvents, ForbidHostSyncs
from dime.replay import ReplayBuffer
from dime.tasks import get_task
from dime.trainer import train

OBS_DIM, ACT_DIM = 5, 2
TASK = get_task("dmc/reacher-easy")  # any task: the agents only read its metadata (critic support, gamma)
PREFILL = 300
WARMUP, CHECKED = 24, 176
#: Per-update agreement of compiled and eager metrics, actions and state (float reassociation only).
RTOL, ATOL = 1e-4, 1e-5

#: Tiny networks and short schedules so every periodic branch fires within a few dozen updates (``train_every`` 1:
#: the methods with an official update cadence of one update per 12 or 20 env steps train on every call here).
TINY: dict[str, dict[str, Any]] = {
    "sac": {"hidden": (16, 16)},
    "dime": {"critic_width": 32, "num_atoms": 11, "diffusion_steps": 2, "score_width": 16, "brn_warmup_steps": 6},
    "dime-gauss": {"critic_width": 32, "num_atoms": 11, "brn_warmup_steps": 6},
    "crossq": {"critic_hidden": (32, 32), "actor_hidden": (16, 16), "brn_warmup_steps": 6},
    "bro": {"critic_width": 32, "actor_width": 16, "utd": 2, "n_quantiles": 8, "reset_steps": (20,)},
    "bro-fast": {"critic_width": 32, "actor_width": 16, "n_quantiles": 8, "reset_steps": (20,)},
    "qsm": {
        "actor_hidden": (16, 16),
        "critic_hidden": (16, 16),
        "time_dim": 8,
        "time_hidden": 16,
        "diffusion_steps": 2,
    },
    "diffusion-ql": {
        "actor_hidden": (16, 16),
        "critic_hidden": (16, 16),
        "diffusion_steps": 2,
        "num_candidates": 4,
        "ema_start": 4,
        "ema_every": 2,
        "train_every": 1,
    },
    "consistency-ac": {
        "actor_hidden": (16, 16),
        "critic_hidden": (16, 16),
        "num_steps": 2,
        "num_candidates": 4,
        "ema_start": 4,
        "ema_every": 2,
        "train_every": 1,
    },
    "dipo": {
        "actor_hidden": (16, 16),
        "critic_hidden": (16, 16),
        "time_dim": 8,
        "time_hidden": 16,
        "diffusion_steps": 2,
        "action_gradient_steps": 2,
    },
    "qvpo": {
        "actor_hidden": (16, 16),
        "critic_hidden": (16, 16),
        "time_dim": 8,
        "time_hidden": 16,
        "diffusion_steps": 2,
        "train_samples": 4,
        "behavior_samples": 2,
        "target_samples": 2,
        "eval_samples": 4,
        "entropy_samples": 3,
    },
    "dacer": {
        "hidden": (16, 16),
        "diffusion_hidden": (16, 16),
        "diffusion_steps": 2,
        "alpha_every": 8,
        "entropy_samples": 20,
        "gmm_iterations": 3,
        "delay_update": 2,
        "train_every": 1,
    },
}


def build(algo: str, device: str | torch.device = "cpu", seed: int = 0) -> tuple[Agent, ReplayBuffer]:
    """An agent and a filled buffer, identical for identical seeds (weights, buffer contents, sampling stream)."""
    device = torch.device(device)
    torch.manual_seed(seed)
    cls = load_algorithm(algo)
    config = cls.default_config(TASK).replace(**{"batch_size": 16, **TINY[algo]}, learning_starts=PREFILL)
    agent = cls(TASK, OBS_DIM, ACT_DIM, config, device)
    buffer = ReplayBuffer(OBS_DIM, ACT_DIM, 2 * PREFILL, device, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(PREFILL):
        obs, action, next_obs = rng.normal(size=OBS_DIM), rng.uniform(-1, 1, ACT_DIM), rng.normal(size=OBS_DIM)
        buffer.add(obs, action, rng.normal(), next_obs, rng.random() < 0.05)
    return agent, buffer


def probe_observations(device: str | torch.device) -> torch.Tensor:
    return torch.linspace(-1, 1, 3 * OBS_DIM, device=device).reshape(3, OBS_DIM)


def run_updates(agent: Agent, buffer: ReplayBuffer, first: int, count: int) -> list[dict[str, torch.Tensor]]:
    obs = probe_observations(agent.device)
    history = []
    for env_step in range(PREFILL + first, PREFILL + first + count):
        history.append({k: v.detach().clone() for k, v in agent.update(buffer, env_step).items()})
        agent.act(obs[:1], deterministic=False)
    return history


def flat_state(agent: Agent) -> dict[str, torch.Tensor]:
    """Every floating tensor of the agent's state_dict (networks, optimiser moments, temperatures), by path."""
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            out[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)

    walk("", agent.state_dict())
    return out


# ------------------------------------------------------------------------------------------ live tensors
def live_tensors(agent: Agent) -> dict[str, tuple[Any, Any, torch.Tensor]]:
    """The tensors compiled code reads, by name, with where each is held: ``(owner, key, tensor)``.

    Parameters and buffers of the agent's modules (``owner`` None: ``load_state_dict`` copies into them), optimiser
    states (``owner`` the per-parameter state dict) and tensor attributes of the agent (``owner`` the agent).
    Outputs such as metric dicts are not inputs and are left out.
    """
    out: dict[str, tuple[Any, Any, torch.Tensor]] = {}

    def visit(name: str, value: Any) -> None:
        if isinstance(value, nn.Module):
            for key, tensor in [*value.named_parameters(), *value.named_buffers()]:
                out[f"{name}.{key}"] = (None, key, tensor)
        elif isinstance(value, torch.optim.Optimizer):
            for g, group in enumerate(value.param_groups):
                for p, param in enumerate(group["params"]):
                    state = value.state.get(param, {})
                    for key, tensor in state.items():
                        if isinstance(tensor, torch.Tensor):
                            out[f"{name}.state[{g}][{p}].{key}"] = (state, key, tensor)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                visit(f"{name}[{i}]", item)

    for attr, value in vars(agent).items():
        if isinstance(value, torch.Tensor):
            out[attr] = (agent, attr, value)
        else:
            visit(attr, value)
    return out


def addresses(agent: Agent) -> dict[str, int]:
    return {name: tensor.data_ptr() for name, (_, _, tensor) in live_tensors(agent).items()}


def sync_state(target: Agent, source: Agent) -> None:
    """``target`` takes ``source``'s exact state without moving any tensor it already holds.

    ``load_state_dict`` alone would give optimisers new state tensors; CUDA graphs captured against the old ones
    would then be recorded again at every update. The new values are copied into the old tensors, which are put
    back where they were.
    """
    before = live_tensors(target)
    target.load_state_dict(copy.deepcopy(source.state_dict()))
    for name, (owner, key, new) in live_tensors(target).items():
        if name not in before:
            continue
        old = before[name][2]
        if new is old:
            continue
        rows = old if new.shape == old.shape else old[: new.shape[0]]
        if rows.shape != new.shape:
            continue  # a different layout: the target keeps the loaded tensor
        with torch.no_grad():
            rows.copy_(new)  # saved with its filled rows only (DIPO's diffusion memory): the leading rows
        if isinstance(owner, dict):
            owner[key] = old
        elif owner is not None:
            setattr(owner, key, old)


# ---------------------------------------------------------------------------------------------- checks
def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], where: str) -> None:
    assert got.keys() == want.keys(), f"{where}: keys {sorted(got)} != {sorted(want)}"
    for key in want:
        message = f"{key} at {where}"
        torch.testing.assert_close(got[key], want[key], rtol=RTOL, atol=ATOL, msg=lambda m, s=message: f"{s}: {m}")


def assert_not_moved(before: dict[str, int], after: dict[str, int], where: str) -> None:
    moved = sorted(name for name, address in before.items() if after.get(name, address) != address)
    assert not moved, f"{where}: tensors moved to a new address (a CUDA graph would be recorded again): {moved}"


def check_compiled_matches_eager(
    algo: str, device: str | torch.device, mode: str, warmup: int = WARMUP, checked: int = CHECKED
) -> CompileEvents:
    """Compiled (``mode``) and eager updates from identical states agree at every update; after ``warmup``
    updates there is no recompilation, no CUDA-graph recording or skip, and no live tensor changes address. On
    CUDA the compiled agent then runs 24 more updates under ``torch.cuda.set_sync_debug_mode("error")`` (its
    compilation and recordings are done by then). Returns the compile events counted after the warm-up (all zero
    when the check passes)."""
    device = torch.device(device)
    torch._dynamo.reset()
    eager, eager_buffer = build(algo, device)
    compiled, compiled_buffer = build(algo, device)
    compiled.compile_updates(mode)
    obs = probe_observations(device)
    steady = CompileEvents()
    pinned: dict[str, int] = {}
    for update in range(warmup + checked):
        sync_state(compiled, eager)
        where = f"{algo} {mode} on {device.type}, update {update}"
        before = addresses(compiled)
        if update > warmup:
            assert_not_moved(pinned, before, f"{where}, loading the eager state")
        results = []
        for agent, buffer in ((eager, eager_buffer), (compiled, compiled_buffer)):
            torch.manual_seed(update)
            counting = steady if agent is compiled and update >= warmup else contextlib.nullcontext()
            with torch._dynamo.config.patch(error_on_recompile=update >= warmup), counting:
                metrics = agent.update(buffer, PREFILL + update)
                actions = agent.act(obs, deterministic=False)
            results.append((metrics, actions, flat_state(agent)))
        pinned = addresses(compiled)
        if update >= warmup:
            assert_not_moved(before, pinned, where)
        (want_metrics, want_actions, want_state), (got_metrics, got_actions, got_state) = results
        assert_same(got_metrics, want_metrics, where)
        assert_same({"actions": got_actions}, {"actions": want_actions}, where)
        assert_same(got_state, want_state, where)
    if device.type == "cuda":
        with cuda_syncs_forbidden(), steady:
            run_updates(compiled, compiled_buffer, warmup + checked, 24)
            compiled.act(obs, deterministic=compiled.config.eval_deterministic)
    assert steady.total() == 0, f"{algo} {mode} on {device.type} after warm-up: {steady.describe()}"
    return steady


@contextlib.contextmanager
def cuda_syncs_forbidden() -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def check_no_host_syncs(algo: str, device: str | torch.device, updates: int = 24) -> None:
    """``updates`` env steps of eager updates and action selection (at the evaluation protocol too) without a host
    sync: op by op on the CPU, with ``torch.cuda.set_sync_debug_mode("error")`` on CUDA (after a few updates, as
    the first ones create the optimiser states). Compiled modes: :func:`check_compiled_matches_eager`."""
    device = torch.device(device)
    agent, buffer = build(algo, device)
    obs = torch.zeros(4, OBS_DIM, device=device)
    first = 3 if device.type == "cuda" else 0
    run_updates(agent, buffer, 0, first)
    with cuda_syncs_forbidden() if device.type == "cuda" else ForbidHostSyncs():
        run_updates(agent, buffer, first, updates)
        agent.act(obs, deterministic=agent.config.eval_deterministic)


def check_state_crosses_devices(algo: str, source: str | torch.device, target: str | torch.device) -> None:
    """An agent and buffer trained a few updates on ``source``, saved as the trainer saves them (torch.save, loaded
    with map_location="cpu"), continue on ``target``: same parameters after loading, and updates run there."""
    agent, buffer = build(algo, source)
    run_updates(agent, buffer, 0, 3)
    blob = io.BytesIO()
    torch.save({"agent": agent.state_dict(), "buffer": buffer.state_dict()}, blob)
    blob.seek(0)
    state = torch.load(blob, map_location="cpu", weights_only=False)
    moved, moved_buffer = build(algo, target, seed=1)
    moved.load_state_dict(state["agent"])
    moved_buffer.load_state_dict(state["buffer"])
    want = {k: v.cpu() for k, v in flat_state(agent).items()}
    got = {k: v.cpu() for k, v in flat_state(moved).items()}
    assert_same(got, want, f"{algo} state from {source} on {target}")
    metrics = run_updates(moved, moved_buffer, 3, 3)[-1]
    assert all(torch.isfinite(v).all() for v in metrics.values()), f"{algo} on {target}: {metrics}"


def check_training_resumes_across_devices(out_dir: str | Path, first: str, second: str) -> dict[str, Any]:
    """A short DIME run trained on ``first`` writes a checkpoint that a longer run resumes on ``second``."""
    out_dir = Path(out_dir)
    overrides = {**TINY["dime"], "learning_starts": 100, "batch_size": 32, "eval_episodes": 1}
    common = {"algo": "dime", "task": "gym/Pendulum-v1", "seed": 0, "out_dir": out_dir, "agent_overrides": overrides}
    precision = torch.get_float32_matmul_precision()  # the trainer switches CUDA matmuls to TF32
    try:
        started = train(**common, total_steps=200, eval_every=100, checkpoint_every=100, device=first)
        (out_dir / "summary.json").unlink()
        resumed = train(**common, total_steps=300, eval_every=100, checkpoint_every=100, device=second)
    finally:
        torch.set_float32_matmul_precision(precision)
    where = f"DIME run from {first} resumed on {second}"
    assert started["device"].startswith(first) and resumed["device"].startswith(second), where
    assert resumed["total_steps"] == 300 and math.isfinite(resumed["final_score"]), f"{where}: {resumed}"
    eval_steps = [row.split(",")[0] for row in (out_dir / "eval.csv").read_text().splitlines()[1:]]
    assert eval_steps == ["1", "100", "200", "300"], f"{where}: evaluations at {eval_steps}"
    return resumed
