"""The one off-policy training loop every algorithm runs through.

Per env step (the DIME reference's SB3 semantics, ``dime.md`` §2.3):

1. act: uniform random actions in [-1, 1]^A for the first ``learning_starts`` steps, the agent's stochastic
   policy afterwards;
2. step the training env; ``env_step += 1``;
3. evaluate at env step 1 and every ``eval_every`` steps, on a separate env re-seeded per evaluation (policy noise
   too, see :func:`evaluation_episodes`), *before* the transition is stored (as the reference's callback does);
4. store ``(s, a, r, s', terminated)``; time-limit truncations bootstrap;
5. ``agent.update(buffer, env_step)`` once ``env_step > learning_starts`` (the agent runs its UTD loop).

Resumability. The run directory holds ``checkpoint.pt`` written atomically every ``checkpoint_every`` steps and on
SIGTERM / SIGUSR1 / SIGINT (what SLURM sends before a kill or preemption), at the end of the current env step; a
signal during an evaluation abandons that evaluation, and the checkpoint then holds the state from before the
env step that triggered it, so the resumed run redoes the step and its evaluation. Restarting the same command
resumes. Resumption is exact: every episode of the training env is reset with a seed derived from (run seed,
episode index), and the checkpoint stores the actions taken so far in the current episode, so the env state is
rebuilt by replaying them (MuJoCo is deterministic); RNG states, the replay buffer, the agent and its optimisers
are stored. ``eval.csv`` therefore comes out identical whether or not a run was interrupted (on CPU; CUDA kernels
may not be bitwise deterministic). While it trains, the process holds the run directory's lock
(:func:`dime.checkpoint.locked_run_directory`), so a second training on the same directory is refused.

Outputs: ``eval.csv`` (deterministic: no wall-clock column), ``config.yaml`` (resolved), ``checkpoint.pt`` (with
an integrity digest) and ``summary.json`` last, which marks a finished run, are replaced atomically;
``metrics.jsonl`` (losses, alpha, Q, steps/s, every ``log_every`` steps and at the last step) is appended to, and a
resumed run drops its rows after the checkpoint, and a line torn by a kill or a full disk, with a warning.
:mod:`dime.run_logging` adds TensorBoard event files, optionally a W&B run, progress lines and ``progress.json``
(what ``python -m dime.status`` reads).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from dime.agents import Agent, AgentConfig, load_algorithm
from dime.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    locked_run_directory,
    save_checkpoint,
)
from dime.compilation import COMPILE_MODES
from dime.provenance import config_hash, git_state, hardware, package_versions, scheduler_ids
from dime.replay import ReplayBuffer
from dime.run_logging import LogOptions, RunLogger
from dime.tasks import TaskSpec, episode_success, get_task, make_env

EVAL_COLUMNS = (
    "step",
    "eval_index",
    "mean_return",
    "success_final",
    "success_any",
    "mean_length",
    "episode_returns",
)
_TRAIN_STREAM, _EVAL_STREAM, _EVAL_POLICY_STREAM = 0, 1, 2


class Preempted(Exception):
    """Raised after a checkpoint was written in response to a termination signal."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"received {signal.Signals(signum).name} at env step {step}; checkpoint written")
        self.signum = signum


class _EvaluationInterrupted(Exception):
    """A termination signal arrived during an evaluation: the evaluation is abandoned, not recorded."""


@dataclass
class TrainConfig:
    """Loop settings that belong to the experiment, not to the algorithm."""

    algo: str
    task: str
    seed: int = 0
    total_steps: int = 1_000_000
    eval_every: int = 3000  # the DIME code's cadence; the released curves keep every 8th point (24k)
    checkpoint_every: int = 10_000
    log_every: int = 1000
    device: str = "auto"
    # "on"/"cudagraphs": torch.compile the agent's step functions (dime.compilation); "off" is the eager reference.
    # An execution setting like the device: not part of the run's identity, so a run may resume in another mode.
    compile: str = "off"
    agent: dict[str, Any] = field(default_factory=dict)  # overrides of the algorithm's default config

    def __post_init__(self) -> None:
        for name in ("total_steps", "eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile!r}; valid choices: {', '.join(COMPILE_MODES)}")


def derive_seed(seed: int, stream: int, index: int) -> int:
    """An independent 31-bit seed for (run seed, stream, index), e.g. the reset seed of training episode i."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0] & 0x7FFFFFFF)


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a device this machine does not have is a one-line ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; valid choices: auto, cpu, cuda, cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise ValueError(f"device {name!r} is not available: {why}; use --device cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {name!r} is not available: {count} CUDA device(s) visible, cuda:0 to cuda:{count - 1}"
            )
    return device


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def _signals_recorded(received: list[int]) -> Iterator[None]:
    """Record SIGTERM/SIGUSR1/SIGINT instead of dying, so the loop can checkpoint at a step boundary."""
    watched = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    try:
        previous = {s: signal.signal(s, lambda signum, _frame: received.append(signum)) for s in watched}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Trainer:
    def __init__(
        self, config: TrainConfig, out_dir: str | Path, quiet: bool = True, log_options: LogOptions | None = None
    ):
        self.config = config
        self.out_dir = Path(out_dir)
        self.quiet = quiet
        self.log_options = log_options or LogOptions()
        self.task: TaskSpec = get_task(config.task)
        self.agent_cls: type[Agent] = load_algorithm(config.algo)
        self.agent_config: AgentConfig = self.agent_cls.default_config(self.task).replace(**config.agent)
        self.device = resolve_device(config.device)
        if config.compile == "cudagraphs" and self.device.type != "cuda":
            raise ValueError(f"compile mode 'cudagraphs' needs a CUDA device, got {self.device}; use --compile on")
        if self.device.type == "cuda":
            # JAX (the DIME reference) uses TF32 matmuls on Ampere/Hopper by default.
            torch.set_float32_matmul_precision("high")
        self.resolved = {
            "algo": config.algo,
            "task": config.task,
            "seed": config.seed,
            "total_steps": config.total_steps,
            "eval_every": config.eval_every,
            "agent": dataclasses.asdict(self.agent_config),
        }
        # The identity of a run: what must match for a checkpoint to be resumable (total_steps may grow).
        identity = {k: v for k, v in self.resolved.items() if k != "total_steps"}
        self.config_hash = config_hash(identity)
        self._stop_signals: list[int] = []  # termination signals received while run() trains

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        cfg, task = self.config, self.task
        seed_everything(cfg.seed)
        self.env = make_env(task)
        self.eval_env = make_env(task)
        obs_dim = int(np.prod(self.env.observation_space.shape))
        act_dim = int(np.prod(self.env.action_space.shape))
        self.agent = self.agent_cls(task, obs_dim, act_dim, self.agent_config, self.device)
        self.agent.total_steps = cfg.total_steps  # run-length schedules (QVPO's entropy weight)
        self.buffer = ReplayBuffer(
            obs_dim, act_dim, min(self.agent_config.buffer_size, cfg.total_steps), self.device, seed=cfg.seed
        )
        self.rng = np.random.default_rng(cfg.seed)  # warm-up actions
        self.step = 0
        self.episode_index = 0
        self.episode_actions: list[np.ndarray] = []
        self.episode_return = 0.0
        self.eval_history: list[dict[str, Any]] = []
        self.update_calls = 0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.obs = self._reset_training_env()

    def _reset_training_env(self) -> np.ndarray:
        obs, _ = self.env.reset(seed=derive_seed(self.config.seed, _TRAIN_STREAM, self.episode_index))
        return obs

    # ------------------------------------------------------------ checkpoint
    def _checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def _identity(self) -> dict[str, Any]:
        return {
            "algo": self.config.algo,
            "task": self.config.task,
            "seed": self.config.seed,
            "config_hash": self.config_hash,
        }

    def _loop_state(self) -> dict[str, Any]:
        """What one env step changes before its evaluation: counters, the episode so far, the RNG states. With
        the agent and the buffer (which change only after the evaluation) it is the state at a step boundary."""
        return {
            "step": self.step,
            "episode_index": self.episode_index,
            "episode_actions": np.asarray(self.episode_actions, dtype=np.float32),
            "episode_return": self.episode_return,
            "obs": self.obs,
            "numpy_rng": self.rng.bit_generator.state,
            "numpy_global_rng": np.random.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def _save(self, loop_state: dict[str, Any] | None = None) -> None:
        """Checkpoint the current state, or the step boundary ``loop_state`` was taken at."""
        save_checkpoint(
            self._checkpoint_path(),
            {
                **self._identity(),
                **(loop_state or self._loop_state()),
                "agent": self.agent.state_dict(),
                "buffer": self.buffer.state_dict(),
                "eval_history": self.eval_history,
                "update_calls": self.update_calls,
                "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds,
            },
        )

    def _restore(self) -> None:
        state = load_checkpoint(self._checkpoint_path(), self._identity())
        self.agent.load_state_dict(state["agent"])
        self.buffer.load_state_dict(state["buffer"])
        self.rng.bit_generator.state = state["numpy_rng"]
        np.random.set_state(state["numpy_global_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = state["step"]
        self.episode_index = state["episode_index"]
        self.episode_return = state["episode_return"]
        self.eval_history = state["eval_history"]
        self.update_calls = state["update_calls"]
        self.train_seconds = state["train_seconds"]
        self.eval_seconds = state["eval_seconds"]
        # Rebuild the training env's mid-episode state by replaying this episode's actions from its seeded reset.
        self.episode_actions = []
        self.obs = self._reset_training_env()
        for action in state["episode_actions"]:
            self.obs, *_ = self.env.step(action)
            self.episode_actions.append(action)
        if not np.array_equal(self.obs, state["obs"]):
            raise CheckpointError(
                f"replaying episode {self.episode_index} did not reproduce the checkpointed observation; "
                "the environment is not deterministic, so this run cannot resume exactly"
            )
        self._write_eval_csv()
        self._truncate_metrics(self.step)

    # ------------------------------------------------------------ evaluation
    def _raise_if_stopped(self) -> None:
        if self._stop_signals:
            raise _EvaluationInterrupted

    def evaluate(self) -> dict[str, Any]:
        """``eval_episodes`` episodes with the algorithm's own protocol (stochastic for DIME)."""
        eval_index = len(self.eval_history)
        episodes = evaluation_episodes(
            self.agent,
            self.eval_env,
            self.agent_config.eval_episodes,
            self.agent_config.eval_deterministic,
            self.config.seed,
            eval_index,
            on_step=self._raise_if_stopped,
        )
        record = {"step": self.step, "eval_index": eval_index, **episodes}
        self.eval_history.append(record)
        self._write_eval_csv()
        return record

    def score(self, record: dict[str, Any]) -> float:
        """The study's score of one evaluation: final-step success on MyoSuite, mean return elsewhere."""
        value = record["success_final"] if self.task.metric == "success" else record["mean_return"]
        return float("nan") if value is None else float(value)

    def _write_eval_csv(self) -> None:
        lines = [",".join(EVAL_COLUMNS)]
        for record in self.eval_history:
            lines.append(",".join("" if record[c] is None else str(record[c]) for c in EVAL_COLUMNS))
        atomic_write_text(self.out_dir / "eval.csv", "\n".join(lines) + "\n")

    # --------------------------------------------------------------- logging
    def _metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def _truncate_metrics(self, step: int) -> None:
        """Keep the rows up to ``step``. A line that does not parse (the last append cut short by a kill or a
        full disk) is dropped with a warning instead of making the run unresumable."""
        path = self._metrics_path()
        if not path.exists():
            return
        kept, unreadable = [], 0
        lines = path.read_text(errors="replace").splitlines() if step > 0 else []  # a fresh start keeps no row
        for line in lines:
            try:
                row_step = json.loads(line)["step"]
            except (ValueError, TypeError, KeyError):
                unreadable += bool(line.strip())
                continue
            if row_step <= step:
                kept.append(line)
        if unreadable:
            print(
                f"warning: {path}: dropped {unreadable} unreadable line(s) left by an interrupted write",
                file=sys.stderr,
            )
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _log(self, row: dict[str, Any]) -> None:
        with self._metrics_path().open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        self._build()
        with locked_run_directory(self.out_dir):
            return self._run_locked()

    def _run_locked(self) -> dict[str, Any]:
        cfg, agent_cfg = self.config, self.agent_config
        if self._checkpoint_path().exists():
            self._restore()  # validates the checkpoint before anything in out_dir is rewritten
        else:
            self._truncate_metrics(0)
            self._write_eval_csv()
        if cfg.compile != "off":
            self.agent.compile_updates(cfg.compile)  # after restoring, so compiled code sees the restored tensors
        resolved = {**self.resolved, "compile": cfg.compile}
        atomic_write_text(self.out_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        received = self._stop_signals
        received.clear()
        window_start, window_steps = time.perf_counter(), 0
        last_metrics: dict[str, torch.Tensor] = {}
        finished_episodes: list[float] = []
        with _signals_recorded(received):
            run_log = self._open_run_log(resolved)
            while self.step < cfg.total_steps:
                tick = time.perf_counter()
                evaluates = self.step + 1 == 1 or (self.step + 1) % cfg.eval_every == 0
                # An evaluation cut short by a signal is redone on resume from the state before this step.
                boundary = self._loop_state() if evaluates else None
                if self.step < agent_cfg.learning_starts:
                    action = self.rng.uniform(-1.0, 1.0, self.env.action_space.shape).astype(np.float32)
                else:
                    with torch.no_grad():
                        obs_t = torch.as_tensor(self.obs, device=self.device).unsqueeze(0)
                        action = self.agent.act(obs_t, deterministic=False)[0].cpu().numpy()
                next_obs, reward, terminated, truncated, _ = self.env.step(action)
                self.step += 1
                self.episode_actions.append(action)
                self.episode_return += float(reward)
                if evaluates:
                    eval_start = time.perf_counter()
                    try:
                        record = self.evaluate()
                    except _EvaluationInterrupted:
                        self._save(boundary)
                        run_log.close()
                        raise Preempted(received[0], self.step - 1) from None
                    self.eval_seconds += time.perf_counter() - eval_start
                    tick += time.perf_counter() - eval_start
                    run_log.evaluation(record, self.score(record))
                self.buffer.add(self.obs, action, reward, next_obs, terminated)
                if terminated or truncated:
                    finished_episodes.append(self.episode_return)
                    self.episode_index += 1
                    self.episode_actions, self.episode_return = [], 0.0
                    self.obs = self._reset_training_env()
                else:
                    self.obs = next_obs
                if self.step > agent_cfg.learning_starts:
                    last_metrics = self.agent.update(self.buffer, self.step)
                    self.update_calls += 1
                self.train_seconds += time.perf_counter() - tick
                window_steps += 1
                run_log.advance(self.step, self.train_seconds)
                # Every log interval, and the last step, so that even a run shorter than log_every has a row.
                if self.step % cfg.log_every == 0 or self.step == cfg.total_steps:
                    now = time.perf_counter()
                    sps = window_steps / max(now - window_start, 1e-9)
                    window_start, window_steps = now, 0
                    row = _metrics_row(self.step, sps, last_metrics, finished_episodes)
                    self._log(row)
                    run_log.metrics(row)
                    finished_episodes = []
                if self.step % cfg.checkpoint_every == 0 or received:
                    self._save()
                    run_log.checkpoint(self.step)
                    if received:
                        run_log.close()
                        raise Preempted(received[0], self.step)
        self._save()
        run_log.checkpoint(self.step)
        summary = self._write_summary()
        run_log.close(summary)
        return summary

    def _open_run_log(self, resolved: dict[str, Any]) -> RunLogger:
        cfg = self.config
        last = self.eval_history[-1] if self.eval_history else None
        return RunLogger(
            self.out_dir,
            run_name=f"{cfg.algo} on {cfg.task} seed {cfg.seed}",
            config=resolved,
            total_steps=cfg.total_steps,
            start_step=self.step,
            train_seconds=self.train_seconds,
            last_eval=(last["step"], self.score(last)) if last else None,
            quiet=self.quiet,
            options=self.log_options,
            device=self.device,
            config_hash=self.config_hash,
        )

    def _write_summary(self) -> dict[str, Any]:
        commit, dirty = git_state()
        final = self.eval_history[-1] if self.eval_history else None
        learning_steps = max(self.step - self.agent_config.learning_starts, 0)
        gradient_steps = getattr(self.agent, "gradient_steps", None)
        summary = {
            "algo": self.config.algo,
            "task": self.config.task,
            "suite": self.task.suite,
            "metric": self.task.metric,
            "seed": self.config.seed,
            "total_steps": self.step,
            "final_score": self.score(final) if final else None,
            "final_eval_step": final["step"] if final else None,
            "wall_clock_s": self.train_seconds + self.eval_seconds,
            "eval_wall_clock_s": self.eval_seconds,
            "env_steps_per_s": self.step / max(self.train_seconds, 1e-9),
            "updates_per_s": (gradient_steps if gradient_steps is not None else learning_steps)
            / max(self.train_seconds, 1e-9),
            "device": str(self.device),
            "compile": self.config.compile,
            "hardware": hardware(self.device),
            "versions": package_versions(),
            "git_commit": commit,
            "git_dirty": dirty,
            "config_hash": self.config_hash,
            **scheduler_ids(),
        }
        summary = _finite_or_null(summary)
        atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
        return summary


def _finite_or_null(value: Any) -> Any:
    """NaN and infinities become None: JSON has no NaN, and a bare NaN makes summary.json unreadable."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value


def _metrics_row(step: int, sps: float, metrics: dict[str, torch.Tensor], episodes: list[float]) -> dict[str, Any]:
    row: dict[str, Any] = {"step": step, "steps_per_s": round(sps, 3)}
    if episodes:
        row["train_episode_return"] = float(np.mean(episodes))
    for key, value in metrics.items():
        number = float(value)  # the only host sync of the metrics, once per log interval
        row[key] = number if math.isfinite(number) else str(number)
    return row


def evaluation_episodes(
    agent: Agent,
    env: Any,
    episodes: int,
    deterministic: bool,
    seed: int,
    eval_index: int,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Evaluation ``eval_index`` of run ``seed``: ``episodes`` episodes of ``agent`` on ``env`` with the algorithm's
    own rule (``deterministic`` as its config says; DIME samples). Returns the ``eval.csv`` columns it measures.

    The first reset is seeded from (seed, eval_index), later episodes continue the env's generator, and the policy's
    sampling noise comes from torch's generators seeded the same way inside ``fork_rng``: an evaluation is a
    function of the policy and (seed, eval_index) alone, so ``dime.evaluate`` reproduces it from a checkpoint, and
    it leaves the training run's random streams untouched. ``on_step`` runs after every reset and env step (video
    frames).
    """
    obs, _ = env.reset(seed=derive_seed(seed, _EVAL_STREAM, eval_index))
    returns, lengths, success_final, success_any = [], [], [], []
    cuda_devices = []
    if agent.device.type == "cuda":
        cuda_devices = [torch.cuda.current_device() if agent.device.index is None else agent.device.index]
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(derive_seed(seed, _EVAL_POLICY_STREAM, eval_index))
        for _ in range(episodes):
            if on_step is not None:
                on_step()
            total, length, solved_any, solved_last = 0.0, 0, False, None
            while True:
                with torch.no_grad():
                    obs_t = torch.as_tensor(obs, device=agent.device).unsqueeze(0)
                    action = agent.act(obs_t, deterministic=deterministic)[0].cpu().numpy()
                obs, reward, terminated, truncated, info = env.step(action)
                if on_step is not None:
                    on_step()
                total += float(reward)
                length += 1
                solved_last = episode_success(info)
                solved_any = solved_any or bool(solved_last)
                if terminated or truncated:
                    break
            returns.append(total)
            lengths.append(length)
            if solved_last is not None:
                success_final.append(float(solved_last))
                success_any.append(float(solved_any))
            obs, _ = env.reset()
    return {
        "mean_return": float(np.mean(returns)),
        "success_final": float(np.mean(success_final)) if success_final else None,
        "success_any": float(np.mean(success_any)) if success_any else None,
        "mean_length": float(np.mean(lengths)),
        "episode_returns": " ".join(f"{r:.6g}" for r in returns),
    }


def train(
    algo: str,
    task: str,
    seed: int,
    total_steps: int,
    out_dir: str | Path,
    agent_overrides: dict[str, Any] | None = None,
    eval_every: int | None = None,
    checkpoint_every: int | None = None,
    log_every: int | None = None,
    device: str = "auto",
    compile: str = "off",
    quiet: bool = True,
    log_options: LogOptions | None = None,
) -> dict[str, Any]:
    """Train (or resume) one run and return its summary (also written to ``out_dir/summary.json``)."""
    optional = {"eval_every": eval_every, "checkpoint_every": checkpoint_every, "log_every": log_every}
    config = TrainConfig(
        algo=algo,
        task=task,
        seed=seed,
        total_steps=total_steps,
        device=device,
        compile=compile,
        agent=dict(agent_overrides or {}),
        **{k: v for k, v in optional.items() if v is not None},
    )
    return Trainer(config, out_dir, quiet=quiet, log_options=log_options).run()


def read_eval_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of an ``eval.csv`` as dicts of strings (small helper for tests and scripts)."""
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
