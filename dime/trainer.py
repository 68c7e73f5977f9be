"""The one off-policy training loop every algorithm runs through.

Per env step (the DIME reference's SB3 semantics, ``dime.md`` §2.3):

1. act: uniform random actions in [-1, 1]^A for the first ``learning_starts`` steps, the agent's stochastic
   policy afterwards;
2. step the training env; ``env_step += 1``;
3. evaluate at env step 1 and every ``eval_every`` steps, on a separate env re-seeded per evaluation, *before* the
   transition is stored (as the reference's callback does);
4. store ``(s, a, r, s', terminated)``; time-limit truncations bootstrap;
5. ``agent.update(buffer, env_step)`` once ``env_step > learning_starts`` (the agent runs its UTD loop).

Resumability. The run directory holds ``checkpoint.pt`` written atomically every ``checkpoint_every`` steps and on
SIGTERM / SIGUSR1 / SIGINT (what SLURM sends before a kill or preemption). Restarting the same command resumes.
Resumption is exact: every episode of the training env is reset with a seed derived from (run seed, episode
index), and the checkpoint stores the actions taken so far in the current episode, so the env state is rebuilt by
replaying them (MuJoCo is deterministic); RNG states, the replay buffer, the agent and its optimisers are stored.
``eval.csv`` therefore comes out identical whether or not a run was interrupted (on CPU; CUDA kernels may not be
bitwise deterministic).

Outputs (all written atomically): ``eval.csv`` (deterministic: no wall-clock column), ``metrics.jsonl`` (losses,
alpha, Q, steps/s, every ``log_every`` steps), ``config.yaml`` (resolved), ``checkpoint.pt``, and ``summary.json``
last, which marks a finished run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from dime.agents import Agent, AgentConfig, load_algorithm
from dime.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint
from dime.compilation import COMPILE_MODES
from dime.provenance import config_hash, git_state, hardware, package_versions, scheduler_ids
from dime.replay import ReplayBuffer
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
_TRAIN_STREAM, _EVAL_STREAM = 0, 1


class Preempted(Exception):
    """Raised after a checkpoint was written in response to a termination signal."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"received {signal.Signals(signum).name} at env step {step}; checkpoint written")
        self.signum = signum


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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    def __init__(self, config: TrainConfig, out_dir: str | Path, quiet: bool = True):
        self.config = config
        self.out_dir = Path(out_dir)
        self.quiet = quiet
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

    def _save(self) -> None:
        save_checkpoint(
            self._checkpoint_path(),
            {
                **self._identity(),
                "step": self.step,
                "episode_index": self.episode_index,
                "episode_actions": np.asarray(self.episode_actions, dtype=np.float32),
                "episode_return": self.episode_return,
                "obs": self.obs,
                "agent": self.agent.state_dict(),
                "buffer": self.buffer.state_dict(),
                "numpy_rng": self.rng.bit_generator.state,
                "numpy_global_rng": np.random.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
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
    def evaluate(self) -> dict[str, Any]:
        """``eval_episodes`` episodes with the algorithm's own protocol (stochastic for DIME)."""
        cfg, agent_cfg = self.config, self.agent_config
        eval_index = len(self.eval_history)
        obs, _ = self.eval_env.reset(seed=derive_seed(cfg.seed, _EVAL_STREAM, eval_index))
        returns, lengths, success_final, success_any = [], [], [], []
        for _ in range(agent_cfg.eval_episodes):
            total, length, solved_any, solved_last = 0.0, 0, False, None
            while True:
                with torch.no_grad():
                    obs_t = torch.as_tensor(obs, device=self.device).unsqueeze(0)
                    action = self.agent.act(obs_t, deterministic=agent_cfg.eval_deterministic)[0].cpu().numpy()
                obs, reward, terminated, truncated, info = self.eval_env.step(action)
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
            obs, _ = self.eval_env.reset()
        record = {
            "step": self.step,
            "eval_index": eval_index,
            "mean_return": float(np.mean(returns)),
            "success_final": float(np.mean(success_final)) if success_final else None,
            "success_any": float(np.mean(success_any)) if success_any else None,
            "mean_length": float(np.mean(lengths)),
            "episode_returns": " ".join(f"{r:.6g}" for r in returns),
        }
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
        path = self._metrics_path()
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _log(self, row: dict[str, Any]) -> None:
        with self._metrics_path().open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        cfg, agent_cfg = self.config, self.agent_config
        self._build()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self._checkpoint_path().exists():
            self._restore()  # validates the checkpoint before anything in out_dir is rewritten
        else:
            self._truncate_metrics(0)
            self._write_eval_csv()
        if cfg.compile != "off":
            self.agent.compile_updates(cfg.compile)  # after restoring, so compiled code sees the restored tensors
        resolved = {**self.resolved, "compile": cfg.compile}
        atomic_write_text(self.out_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        received: list[int] = []
        progress = _progress(cfg.total_steps, self.step, disable=self.quiet)
        window_start, window_steps = time.perf_counter(), 0
        last_metrics: dict[str, torch.Tensor] = {}
        finished_episodes: list[float] = []
        with _signals_recorded(received):
            while self.step < cfg.total_steps:
                tick = time.perf_counter()
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
                if self.step == 1 or self.step % cfg.eval_every == 0:
                    eval_start = time.perf_counter()
                    record = self.evaluate()
                    self.eval_seconds += time.perf_counter() - eval_start
                    tick += time.perf_counter() - eval_start
                    progress.set_postfix_str(f"eval {self.score(record):.4g}", refresh=False)
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
                progress.update(1)
                if self.step % cfg.log_every == 0:
                    now = time.perf_counter()
                    sps = window_steps / max(now - window_start, 1e-9)
                    window_start, window_steps = now, 0
                    self._log(_metrics_row(self.step, sps, last_metrics, finished_episodes))
                    finished_episodes = []
                    progress.set_postfix_str(f"{sps:.1f} steps/s | {_last_eval(self)}", refresh=False)
                if self.step % cfg.checkpoint_every == 0 or received:
                    self._save()
                    if received:
                        progress.close()
                        raise Preempted(received[0], self.step)
        progress.close()
        self._save()
        return self._write_summary()

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
        atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def _metrics_row(step: int, sps: float, metrics: dict[str, torch.Tensor], episodes: list[float]) -> dict[str, Any]:
    row: dict[str, Any] = {"step": step, "steps_per_s": round(sps, 3)}
    if episodes:
        row["train_episode_return"] = float(np.mean(episodes))
    for key, value in metrics.items():
        number = float(value)  # the only host sync of the metrics, once per log interval
        row[key] = number if math.isfinite(number) else str(number)
    return row


def _last_eval(trainer: Trainer) -> str:
    return f"eval {trainer.score(trainer.eval_history[-1]):.4g}" if trainer.eval_history else "no eval yet"


class _NullProgress:
    def update(self, n: int) -> None: ...
    def set_postfix_str(self, text: str, refresh: bool = True) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, start: int, disable: bool) -> Any:
    if disable:
        return _NullProgress()
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, smoothing=0.05)


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
    return Trainer(config, out_dir, quiet=quiet).run()


def read_eval_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of an ``eval.csv`` as dicts of strings (small helper for tests and scripts)."""
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
