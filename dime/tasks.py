"""Task registry and one environment factory for Gymnasium MuJoCo, DeepMind Control and MyoSuite.

Every environment leaves :func:`make_env` with the same contract, whatever its suite:

* observations flattened to a float32 vector (DMC dict observations in gymnasium's sorted-key order);
* actions in ``[-1, 1]^A``, mapped affinely onto the native bounds (``dime.md`` §2.2);
* ``terminated`` kept apart from ``truncated``: DMC episodes only ever truncate (1000 control steps, no action
  repeat), Gym and MyoSuite terminate on unhealthy states / dropped objects, so time limits bootstrap;
* MyoSuite's ``info["solved"]`` passed through for success-rate scoring.

Task names are ``<suite>/<name>``: ``dmc/dog-run``, ``gym/Humanoid-v4``, ``myo/key-turn-hard``.
Per task the registry knows the suite, episode length, default critic support (``v_min``/``v_max``) and the
score metric the study tables use.

Critic support of the categorical critics (DIME, DIME-Gauss): the authors' values where they chose one (±200 on
DMC, ``configs/alg/dime.yaml``; ±1600 on Ant and Humanoid, README and ALRhub/DIME#2). Elsewhere one rule: with
per-step rewards in [r_lo, r_hi] and time limits that bootstrap, the discounted value of every state lies in
[min(r_lo, 0), max(r_hi, 0)]/(1 − γ) (γ = 0.99, DIME's; 0 is the value after a termination); the support is that
interval widened by half its width on each side, rounded outward to a multiple of 10. The headroom holds what
the target adds beyond the reward (DIME's −α·cost bonus) and early over- and under-estimates; the width keeps
the 101 atoms a few percent of the value range apart. Per task (per-step reward range → support):

==========================  ===================  ====================  ==========================================
task (``-v4`` and ``-v5``)  r_lo, r_hi           support               source of the reward range
==========================  ===================  ====================  ==========================================
Pendulum-v1                 −16.27, 0            −2450, 820            −(π² + 0.1·8² + 0.001·2²): angle, max speed
                                                                       and torque (exact)
Reacher                     −2.41, 0             −370, 130             fingertip-target distance ≤ 0.21 + 0.2,
                                                                       control Σa² ≤ 2 (exact)
Pusher                      −5, 0                −750, 250             control 0.1·Σa² ≤ 2.8 plus the two
                                                                       distances on the table (≥ −3.6 observed)
InvertedPendulum            0, 1                 −50, 150              1 per step alive (exact)
InvertedDoublePendulum      0, 10                −500, 1500            alive bonus 10 minus penalties (exact top)
Swimmer                     −3, 3                −600, 600             forward velocity; bang-bang actions reach
                                                                       ±2.8 per step (sustained speeds ≈ 0.35)
HumanoidStandup             −11, 470             −25150, 71050         torso height (≤ 1.4 m) / timestep 0.003,
                                                                       impact cost ≤ 10
Ant, Humanoid               –                    −1600, 1600           the authors' Gym value
HalfCheetah, Hopper,        –                    −1600, 1600           the authors' Gym value: the same reward
Walker2d                                                               form as Ant/Humanoid (healthy bonus +
                                                                       forward velocity − control), unbounded
==========================  ===================  ====================  ==========================================

MyoSuite: see ``MYO_VALUE_RANGE``. Another γ (or reward scale) needs ``--set v_min=… v_max=…``.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np

# Nothing here renders; without this dm_control probes GLFW and warns about a missing X display on headless nodes.
os.environ.setdefault("MUJOCO_GL", "disable")

Suite = Literal["dmc", "gym", "myo"]
Metric = Literal["return", "success"]

#: DMC critic support of the DIME code (configs/alg/dime.yaml).
DMC_VALUE_RANGE = (-200.0, 200.0)
#: Gym critic support the DIME authors used for Ant-v3/Humanoid-v3 (README, ALRhub/DIME#2); also the Gym locomotion
#: tasks with the same reward form (HalfCheetah, Hopper, Walker2d).
GYM_VALUE_RANGE = (-1600.0, 1600.0)
#: Per-step reward ranges [r_lo, r_hi] of the Gym tasks whose support follows :func:`critic_support` (the table in
#: the module docstring gives the sources).
GYM_REWARD_RANGES: dict[str, tuple[float, float]] = {
    "Pendulum": (-(math.pi**2 + 0.1 * 8.0**2 + 0.001 * 2.0**2), 0.0),
    "Reacher": (-(0.21 + 0.2 + 2.0), 0.0),
    "Pusher": (-5.0, 0.0),
    "InvertedPendulum": (0.0, 1.0),
    "InvertedDoublePendulum": (0.0, 10.0),
    "Swimmer": (-3.0, 3.0),
    "HumanoidStandup": (-11.0, 470.0),
}
#: The discount the supports are derived for: DIME's (and DIME-Gauss's) default.
SUPPORT_GAMMA = 0.99
#: MyoSuite support is not recoverable from the DIME repository (``dime.md`` §1, open question). MyoSuite's hand
#: rewards reach several units per step (e.g. key-turn: angle + bonus 4 − 10·fingertip distances; obj-hold:
#: bonus 4 − 100·goal distance), and time limits bootstrap, so discounted values approach 100 × the per-step reward.
#: ±1000 keeps them inside the support with DMC's headroom ratio; override with ``--set v_min=... v_max=...``.
MYO_VALUE_RANGE = (-1000.0, 1000.0)


def critic_support(reward_low: float, reward_high: float, gamma: float = SUPPORT_GAMMA) -> tuple[float, float]:
    """The support rule of the module docstring: the value bounds [min(r_lo, 0), max(r_hi, 0)]/(1 − γ), widened by
    half their width on each side and rounded outward to a multiple of 10."""
    low, high = min(reward_low, 0.0) / (1.0 - gamma), max(reward_high, 0.0) / (1.0 - gamma)
    margin = 0.5 * (high - low)
    return 10.0 * math.floor((low - margin) / 10.0), 10.0 * math.ceil((high + margin) / 10.0)


def _gym_support(env: str) -> tuple[float, float]:
    reward_range = GYM_REWARD_RANGES.get(env)
    return GYM_VALUE_RANGE if reward_range is None else critic_support(*reward_range)


class UnknownTaskError(ValueError):
    """Raised for a task name that is not in the registry; the message lists close matches."""


@dataclass(frozen=True)
class TaskSpec:
    """Static facts about one task."""

    name: str  # registry name, e.g. "dmc/dog-run"
    suite: Suite
    env_id: str  # gymnasium id passed to gym.make
    episode_length: int  # time limit in env (control) steps
    v_min: float
    v_max: float
    metric: Metric  # the score the study tables use: undiscounted return, or MyoSuite final-step success

    @property
    def value_range(self) -> tuple[float, float]:
        return (self.v_min, self.v_max)


# Gymnasium MuJoCo v4 (closest to the paper's mujoco-py v3) and v5; Pendulum-v1 is the cheap task of the
# learning tests. Episode lengths are those registered by gymnasium.
_GYM_MUJOCO = {
    "Ant": 1000,
    "HalfCheetah": 1000,
    "Hopper": 1000,
    "Humanoid": 1000,
    "HumanoidStandup": 1000,
    "InvertedDoublePendulum": 1000,
    "InvertedPendulum": 1000,
    "Pusher": 100,
    "Reacher": 50,
    "Swimmer": 1000,
    "Walker2d": 1000,
}

# MyoSuite hand tasks: "<task>" is the Fixed variant, "<task>-hard" the Random variant used by DIME and BRO.
# Horizons are MyoSuite's registry values (identical from 2.2 to 3.0).
_MYO_HAND = {
    "reach": ("myoHandReachFixed-v0", "myoHandReachRandom-v0", 100),
    "pose": ("myoHandPoseFixed-v0", "myoHandPoseRandom-v0", 100),
    "obj-hold": ("myoHandObjHoldFixed-v0", "myoHandObjHoldRandom-v0", 75),
    "key-turn": ("myoHandKeyTurnFixed-v0", "myoHandKeyTurnRandom-v0", 200),
    "pen-twirl": ("myoHandPenTwirlFixed-v0", "myoHandPenTwirlRandom-v0", 50),
}


@functools.cache
def _static_tasks() -> dict[str, TaskSpec]:
    """Gym and MyoSuite tasks (known without importing their simulators)."""
    tasks: dict[str, TaskSpec] = {}
    for env, length in _GYM_MUJOCO.items():
        for version in ("v4", "v5"):
            name = f"gym/{env}-{version}"
            tasks[name] = TaskSpec(name, "gym", f"{env}-{version}", length, *_gym_support(env), "return")
    tasks["gym/Pendulum-v1"] = TaskSpec(
        "gym/Pendulum-v1", "gym", "Pendulum-v1", 200, *_gym_support("Pendulum"), "return"
    )
    for short, (fixed_id, random_id, length) in _MYO_HAND.items():
        for name, env_id in ((f"myo/{short}", fixed_id), (f"myo/{short}-hard", random_id)):
            tasks[name] = TaskSpec(name, "myo", env_id, length, *MYO_VALUE_RANGE, "success")
    return tasks


@functools.cache
def _dmc_tasks() -> dict[str, TaskSpec]:
    """Every task of the DeepMind Control suite (``dm_control.suite.ALL_TASKS``, dog and humanoid included)."""
    from dm_control import suite as dmc_suite

    return {
        f"dmc/{domain}-{task}": TaskSpec(
            f"dmc/{domain}-{task}", "dmc", f"dm_control/{domain}-{task}-v0", 1000, *DMC_VALUE_RANGE, "return"
        )
        for domain, task in dmc_suite.ALL_TASKS
    }


def registry() -> dict[str, TaskSpec]:
    """All known tasks, keyed by name."""
    return {**_dmc_tasks(), **_static_tasks()}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; unknown names raise :class:`UnknownTaskError` naming close matches."""
    tasks = _dmc_tasks() if name.startswith("dmc/") else _static_tasks()
    if name in tasks:
        return tasks[name]
    close = difflib.get_close_matches(name, registry().keys(), n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else "list them with `python -m dime.train --list-tasks`"
    raise UnknownTaskError(f"unknown task {name!r}; {hint}")


class _FlatFloat32Observation(gym.ObservationWrapper):
    """Flatten (dict) observations to one float32 vector in gymnasium's canonical (sorted-key) order."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        flat = gym.spaces.flatten_space(env.observation_space)
        self.observation_space = gym.spaces.Box(
            low=flat.low.astype(np.float32), high=flat.high.astype(np.float32), dtype=np.float32
        )
        self._source_space = env.observation_space

    def observation(self, observation: Any) -> np.ndarray:
        return np.asarray(gym.spaces.flatten(self._source_space, observation), dtype=np.float32)


class _UnitActions(gym.ActionWrapper):
    """Accept actions in [-1, 1]^A and map them affinely onto the native Box bounds (clipping first)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.action_space
        assert isinstance(space, gym.spaces.Box), "only continuous action spaces are supported"
        self._low = space.low.astype(np.float64)
        self._high = space.high.astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=space.shape, dtype=np.float32)

    def action(self, action: np.ndarray) -> np.ndarray:
        unit = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        return self._low + 0.5 * (unit + 1.0) * (self._high - self._low)


def _import_suite(suite: Suite) -> None:
    # Under gymnasium 1.x the dm_control/ and myo* ids exist only after these imports.
    if suite == "dmc":
        import shimmy  # noqa: F401
    elif suite == "myo":
        import myosuite  # noqa: F401


def make_env(task: str | TaskSpec, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """Build the environment of ``task`` with the common contract of this module.

    ``seed`` seeds the first reset and the action space (for uniform warm-up actions); later episodes should be
    reset with explicit seeds by the caller when exact reproducibility across restarts matters (the trainer does).
    ``render_mode="rgb_array"`` makes ``env.render()`` return frames (needs ``MUJOCO_GL=egl`` or ``osmesa`` set
    before this module is imported; see ``dime.evaluate``).
    """
    spec = get_task(task) if isinstance(task, str) else task
    _import_suite(spec.suite)
    env = gym.make(spec.env_id, **({"render_mode": render_mode} if render_mode else {}))
    if spec.suite == "myo" and env.spec is not None and env.spec.max_episode_steps is None:
        env = gym.wrappers.TimeLimit(env, spec.episode_length)
    env = _FlatFloat32Observation(env)
    env = _UnitActions(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def episode_success(info: dict[str, Any]) -> bool | None:
    """MyoSuite's per-step success flag (``solved``; ``is_success`` elsewhere), or None if the env has none."""
    for key in ("solved", "is_success"):
        if key in info:
            return bool(np.asarray(info[key]).any())
    return None
