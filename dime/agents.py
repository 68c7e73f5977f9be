"""The ``Agent`` interface every algorithm implements, and the algorithm registry.

A new algorithm is one file: a config dataclass derived from :class:`AgentConfig`, an :class:`Agent` subclass, and
one line in :data:`ALGORITHMS` (or no line at all: ``--algo my_package.my_module:MyAgent`` loads any importable
class). The trainer (:mod:`dime.trainer`) owns the environment loop, warm-up, evaluation, logging and
checkpointing; the agent owns everything that happens per gradient step (UTD, policy delay, resets).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dime.compilation import CompileMode, compile_function, mark_state_static
from dime.replay import ReplayBuffer
from dime.tasks import TaskSpec

#: Registered algorithms: name -> "module:Class". Lazy imports keep ``--help`` and the task list fast.
ALGORITHMS: dict[str, str] = {
    "sac": "baselines.sac:SAC",
    "dime": "dime.dime_agent:DIME",
    "dime-gauss": "dime.gauss_ablation:DIMEGauss",
    "crossq": "baselines.crossq:CrossQ",
    "bro": "baselines.bro:BRO",
    "bro-fast": "baselines.bro:BROFast",
    "qsm": "baselines.qsm:QSM",
    "diffusion-ql": "baselines.diffusion_ql:DiffusionQL",
    "consistency-ac": "baselines.consistency_ac:ConsistencyAC",
    "dipo": "baselines.dipo:DIPO",
    "qvpo": "baselines.qvpo:QVPO",
    "dacer": "baselines.dacer:DACER",
}


class UnknownAlgorithmError(ValueError):
    """Raised for an algorithm name that is neither registered nor an importable ``module:Class``."""


class ConfigError(ValueError):
    """Raised for an unknown config key or a value of the wrong type or range; the message is one line.

    ``key`` names the offending field when there is one (a study file's error then names ``set.<key>``).
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclass
class AgentConfig:
    """Fields the trainer reads from every algorithm's config. Subclasses add their own hyperparameters.

    ``learning_starts``: env steps of uniform random actions before the first policy action and update.
    ``eval_episodes`` / ``eval_deterministic``: the algorithm's own evaluation protocol.
    """

    learning_starts: int = 5000
    batch_size: int = 256
    gamma: float = 0.99
    buffer_size: int = 1_000_000
    eval_episodes: int = 5
    eval_deterministic: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Range and meaning checks of every field; raises :class:`ConfigError` with one line naming the field,
        its value and what is valid. Subclasses extend it (``super().validate()`` first) for their own fields, so
        a config can never be built, by default, ``replace`` or ``--set``, with a value the algorithm would
        silently misread or crash on."""
        at_least(self, 0, "learning_starts")
        at_least(self, 1, "batch_size", "buffer_size", "eval_episodes")
        check(self, "gamma", 0.0 < self.gamma <= 1.0, "a discount in (0, 1]")

    def replace(self, **overrides: Any) -> AgentConfig:
        """A copy with ``overrides`` applied after checking names, types and ranges (one-line :class:`ConfigError`)."""
        return dataclasses.replace(self, **coerce_overrides(type(self), overrides))


def check(config: Any, name: str, ok: bool, valid: str) -> None:
    """Raise :class:`ConfigError` naming ``config.<name>``, its value and ``valid`` (what it must be) unless ``ok``."""
    if not ok:
        raise ConfigError(
            f"invalid {name}={getattr(config, name)!r} for {type(config).__name__}; valid: {valid}", key=name
        )


def at_least(config: Any, minimum: float, *names: str) -> None:
    """Each named field is a number >= ``minimum`` (``None`` is allowed only where the field's type allows it)."""
    for name in names:
        value = getattr(config, name)
        if value is not None:
            check(config, name, value >= minimum, f"a number >= {minimum:g}")


def positive(config: Any, *names: str) -> None:
    """Each named field is a finite number > 0 (learning rates, widths, scales)."""
    for name in names:
        value = getattr(config, name)
        if value is not None:
            check(config, name, 0 < value < float("inf"), "a finite number > 0")


def unit_interval(config: Any, *names: str) -> None:
    """Each named field lies in [0, 1] (Polyak rates, momenta, probabilities)."""
    for name in names:
        value = getattr(config, name)
        if value is not None:
            check(config, name, 0.0 <= value <= 1.0, "a number in [0, 1]")


def nonempty_widths(config: Any, *names: str) -> None:
    """Each named field is a non-empty tuple of layer widths >= 1."""
    for name in names:
        value = getattr(config, name)
        check(config, name, len(value) > 0 and all(w >= 1 for w in value), "a non-empty list of widths >= 1")


def coerce_overrides(config_cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """Check override keys against the dataclass fields and coerce YAML scalars to the declared types."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key {key!r} for {config_cls.__name__}; valid keys: {', '.join(fields)}", key=key
            )
        out[key] = _coerce(key, value, fields[key].type)
    return out


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    kind = kind.replace(" ", "")
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise TypeError
        if kind == "int":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise TypeError
            return int(float(value))
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind in ("str", "Literal"):
            return str(value)
        if kind.startswith(("tuple[int", "list[int")):
            items = value if isinstance(value, list | tuple) else [value]
            return tuple(int(v) for v in items)
        if kind.startswith(("float|None", "Optional[float]")):
            return None if value is None or str(value).lower() in ("none", "null") else float(value)
        if kind.startswith(("int|None", "Optional[int]")):
            return None if value is None or str(value).lower() in ("none", "null") else int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key!r} expects {kind}, got {value!r}", key=key) from None
    return value


class Agent(abc.ABC):
    """An off-policy agent driven by :class:`dime.trainer.Trainer`.

    Subclasses set ``Config`` and implement the four methods below. ``update`` is called once per env step after
    ``learning_starts`` and performs every gradient step of that env step (UTD, delayed actor, temperature),
    sampling its own minibatches from the buffer. Metrics are returned as tensors (no host sync); the trainer reads
    them only at its logging interval.

    ``compiled_methods`` names the tensor-only step functions that :meth:`compile_updates` compiles: methods whose
    control flow depends only on their argument shapes and on config values, never on counters or tensor values
    (the host-side schedule that calls them stays in ``update``).
    """

    Config: ClassVar[type[AgentConfig]] = AgentConfig
    compiled_methods: ClassVar[tuple[str, ...]] = ("act",)

    def __init__(self, task: TaskSpec, obs_dim: int, act_dim: int, config: AgentConfig, device: torch.device):
        self.task = task
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.config = config
        self.device = device
        # The run's env-step budget, set by the trainer before training (and again on resume); agents whose
        # schedules span the run read it (QVPO's entropy weight). None outside a trainer run.
        self.total_steps: int | None = None

    @classmethod
    def default_config(cls, task: TaskSpec) -> AgentConfig:
        """The algorithm's defaults for ``task`` (per-suite values such as the critic support live here)."""
        return cls.Config()

    @abc.abstractmethod
    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Actions in [-1, 1]^A for a (B, O) float32 batch of observations."""

    @abc.abstractmethod
    def update(self, buffer: ReplayBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """All gradient steps belonging to one env step; returns scalar metrics as tensors."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers, counters: everything needed to resume bit-exactly."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def compile_updates(self, mode: CompileMode = "on") -> None:
        """Replace every method in ``compiled_methods`` by its compiled version (:mod:`dime.compilation`)."""
        mark_state_static(self)
        for name in self.compiled_methods:
            setattr(self, name, compile_function(getattr(self, name), mode, self.device))


def load_algorithm(name: str) -> type[Agent]:
    """Resolve a registered name (``dime``) or an import path (``my_pkg.my_algo:MyAgent``) to an Agent class."""
    target = ALGORITHMS.get(name)
    if target is None and ":" not in name:
        raise UnknownAlgorithmError(f"unknown algorithm {name!r}; valid choices: {', '.join(ALGORITHMS)}")
    module_name, _, class_name = (target or name).partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise UnknownAlgorithmError(f"cannot load algorithm {name!r} ({target or name}): {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise UnknownAlgorithmError(f"algorithm {name!r} resolves to {cls!r}, which is not a dime.agents.Agent")
    return cls
