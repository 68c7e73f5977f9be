"""The fast path (``--compile on``) against the eager reference, for every registered algorithm.

* the hot loop (replay sampling, every gradient step of an env step, action selection) never synchronises with
  the device: checked op by op with :class:`dime.compilation.ForbidHostSyncs`, which works on the CPU;
* compiled and eager updates from the same state give the same metrics, actions and parameters, at each of a few
  hundred consecutive updates;
* after a warm-up that visits every phase of the schedule (policy delay, temperature steps, EMA, resets), nothing
  is recompiled (``torch._dynamo.config.error_on_recompile``).

Networks are tiny so that compiling every algorithm stays within the CI budget; the code paths are the paper's.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch._dynamo

from dime.agents import ALGORITHMS, Agent, load_algorithm
from dime.compilation import ForbidHostSyncs, HostSyncError, compile_function
from dime.replay import ReplayBuffer
from dime.tasks import get_task
from dime.trainer import train

OBS_DIM, ACT_DIM = 5, 2
TASK = get_task("dmc/reacher-easy")  # any task: the agents only read its metadata (critic support, gamma)
PREFILL = 300

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


def test_every_algorithm_has_a_tiny_config():
    assert set(TINY) == set(ALGORITHMS)


def build(algo: str, seed: int = 0) -> tuple[Agent, ReplayBuffer]:
    """An agent and a filled buffer, identical for identical seeds (weights, buffer contents, sampling stream)."""
    torch.manual_seed(seed)
    cls = load_algorithm(algo)
    config = cls.default_config(TASK).replace(**{"batch_size": 16, **TINY[algo]}, learning_starts=PREFILL)
    agent = cls(TASK, OBS_DIM, ACT_DIM, config, torch.device("cpu"))
    buffer = ReplayBuffer(OBS_DIM, ACT_DIM, 2 * PREFILL, "cpu", seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(PREFILL):
        obs, action, next_obs = rng.normal(size=OBS_DIM), rng.uniform(-1, 1, ACT_DIM), rng.normal(size=OBS_DIM)
        buffer.add(obs, action, rng.normal(), next_obs, rng.random() < 0.05)
    return agent, buffer


def run_updates(agent: Agent, buffer: ReplayBuffer, first: int, count: int) -> list[dict[str, torch.Tensor]]:
    obs = torch.linspace(-1, 1, 3 * OBS_DIM).reshape(3, OBS_DIM)
    history = []
    for env_step in range(PREFILL + first, PREFILL + first + count):
        history.append({k: v.detach().clone() for k, v in agent.update(buffer, env_step).items()})
        agent.act(obs[:1], deterministic=False)
    return history


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_hot_loop_has_no_host_syncs(algo: str):
    agent, buffer = build(algo)
    obs = torch.zeros(4, OBS_DIM)
    with ForbidHostSyncs():
        run_updates(agent, buffer, 0, 24)
        agent.act(obs, deterministic=agent.config.eval_deterministic)


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


WARMUP, CHECKED = 24, 176


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_compiled_updates_match_eager_without_recompiling(algo: str):
    """Before every update the compiled agent takes the eager agent's exact state and RNG seed, so each comparison
    measures one update's compiled-vs-eager error rather than the chaotic growth of rounding differences."""
    torch._dynamo.reset()
    eager, eager_buffer = build(algo)
    compiled, compiled_buffer = build(algo)
    compiled.compile_updates("on")
    obs = torch.linspace(-1, 1, 3 * OBS_DIM).reshape(3, OBS_DIM)
    for update in range(WARMUP + CHECKED):
        compiled.load_state_dict(copy.deepcopy(eager.state_dict()))
        results = []
        for agent, buffer in ((eager, eager_buffer), (compiled, compiled_buffer)):
            torch.manual_seed(update)
            with torch._dynamo.config.patch(error_on_recompile=update >= WARMUP):
                metrics = agent.update(buffer, PREFILL + update)
                actions = agent.act(obs, deterministic=False)
            results.append((metrics, actions, flat_state(agent)))
        (want_metrics, want_actions, want_state), (got_metrics, got_actions, got_state) = results
        assert_same(got_metrics, want_metrics, f"update {update}")
        assert_same({"actions": got_actions}, {"actions": want_actions}, f"update {update}")
        assert_same(got_state, want_state, f"update {update}")


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], where: str) -> None:
    assert got.keys() == want.keys()
    for key in want:
        message = f"{key} at {where}"
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=lambda m, s=message: f"{s}: {m}")


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
