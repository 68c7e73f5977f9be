"""Where a run reports while it trains: TensorBoard, Weights & Biases, progress lines and ``progress.json``.

The trainer calls one :class:`RunLogger` at its log points (start or resume, every env step, every evaluation,
every ``log_every`` metrics row, every checkpoint, the end). ``metrics.jsonl`` and ``eval.csv`` stay the trainer's
own files; this module adds, next to them in the run directory:

* ``tensorboard/``: event files with the metrics row (``train/<key>``: losses, α, Q, entropy-bound terms, training
  episode return; ``time/steps_per_s``) and every evaluation (``eval/<key>``), at the env step as global step. A
  resumed run purges events past its checkpoint, so curves never double back. Without the ``tensorboard`` package
  (e.g. a GPU node with only the training stack) the run prints one warning line and continues.
* ``wandb/`` (``--wandb project[/entity]``, optional ``wandb`` package): the same scalars against ``env_step``, the
  resolved config and the provenance (git commit, packages, hardware, SLURM ids). Offline unless ``WANDB_API_KEY``
  or ``WANDB_MODE`` says otherwise (``wandb sync <run>/wandb/offline-run-*`` uploads later). The W&B run id is kept
  in ``wandb_run_id``, so a resumed run continues the same W&B run.
* ``progress.json``: step, budget, last checkpoint step, last evaluation, training speed, pid and host, rewritten
  atomically at every log point; ``python -m dime.status`` reads it to tell running runs from stopped ones.

Console: with a progress bar (tqdm) interactively; with ``--quiet`` (batch jobs, Snakemake's ``train.log``, SLURM
output files) one timestamped line on start or resume and one every ``progress_every`` steps or
``progress_minutes`` minutes: step/total, last evaluation, env steps/s and the ETA, both excluding evaluation time.

Only the standard library is imported at module level, so ``dime.status`` can read progress files without torch.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

PROGRESS_FILE = "progress.json"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"
#: Lines that open an attempt in a run's log (``dime.status`` reads an attempt's fate from the lines after them).
START_MARKERS = ("] start: ", "] resumed from env step ")
EVAL_KEYS = ("score", "mean_return", "success_final", "success_any", "mean_length")


@dataclass(frozen=True)
class LogOptions:
    """Where a run reports, beyond ``metrics.jsonl`` and ``eval.csv`` (execution settings, not the run's identity)."""

    wandb: str | None = None  # "project" or "project/entity"
    progress_every: int = 10_000  # --quiet: a progress line every this many env steps ...
    progress_minutes: float = 5.0  # ... or this many minutes, whichever comes first

    def __post_init__(self) -> None:
        if self.progress_every <= 0 or not self.progress_minutes > 0:
            raise ValueError(
                f"progress_every and progress_minutes must be positive, got {self.progress_every}, "
                f"{self.progress_minutes}"
            )
        if self.wandb is not None:
            parse_wandb_target(self.wandb)


def parse_wandb_target(target: str) -> tuple[str, str | None]:
    """``"project"`` -> (project, None); ``"project/entity"`` -> (project, entity); anything else is a ValueError."""
    project, _, entity = target.partition("/")
    if not project or "/" in entity or (target.endswith("/") and not entity):
        raise ValueError(f"--wandb expects project or project/entity, got {target!r}")
    return project, entity or None


def format_duration(seconds: float | None) -> str:
    """``3h41m``, ``12m05s``, ``45s``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def read_progress(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``progress.json``, or None when absent or unreadable (a run from before this file existed)."""
    try:
        return json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def _stamp() -> str:
    return datetime.now().strftime("[%Y-%m-%d %H:%M:%S]")


class RunLogger:
    """Everything a run reports besides its metrics.jsonl/eval.csv; one per process, created when the loop starts.

    ``start_step`` > 0 means the run resumed from a checkpoint at that step, ``train_seconds`` is the training time
    (evaluation excluded) the run had spent by then, and ``last_eval`` the (step, score) of its latest evaluation,
    so progress lines show it before the next one.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        run_name: str,
        config: dict[str, Any],
        total_steps: int,
        start_step: int,
        train_seconds: float,
        last_eval: tuple[int, float] | None,
        quiet: bool,
        options: LogOptions,
        device: Any,
        config_hash: str,
    ):
        self.out_dir = out_dir
        self.total_steps = total_steps
        self.quiet = quiet
        self.options = options
        self.step = start_step
        self.checkpoint_step = start_step if start_step > 0 else None
        self.last_eval = last_eval
        self.train_seconds = train_seconds
        # The speed of the latest window, excluding evaluation time (what ETAs use).
        self._rate_mark = (start_step, train_seconds)
        self.steps_per_s: float | None = None
        self._line_mark = (start_step, time.monotonic())
        self._bar = None
        if start_step > 0:
            self._print(f"resumed from env step {start_step} of {total_steps}: {run_name}, out {out_dir}")
        else:
            self._print(f"start: {run_name}, {total_steps} env steps, device {device}, out {out_dir}")
        self._tensorboard = self._open_tensorboard(purge_step=start_step if start_step > 0 else None)
        self._wandb = self._open_wandb(run_name, config, device, config_hash) if options.wandb else None
        if not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, smoothing=0.05)
        self._write_progress("running")

    # ------------------------------------------------------------------ sinks
    def _open_tensorboard(self, purge_step: int | None) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print(
                "warning: the tensorboard package is not installed; this run logs to metrics.jsonl only "
                "(pip install tensorboard==2.21.0 for TensorBoard event files)",
                file=sys.stderr,
                flush=True,
            )
            return None
        return SummaryWriter(str(self.out_dir / TENSORBOARD_DIR), purge_step=purge_step, flush_secs=60)

    def _open_wandb(self, run_name: str, config: dict[str, Any], device: Any, config_hash: str) -> Any:
        import wandb

        from dime.checkpoint import atomic_write_text
        from dime.provenance import git_state, hardware, package_versions, scheduler_ids

        project, entity = parse_wandb_target(self.options.wandb or "")
        id_path = self.out_dir / WANDB_ID_FILE
        run_id = id_path.read_text().strip() if id_path.exists() else secrets.token_hex(4)
        atomic_write_text(id_path, run_id + "\n")
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        commit, dirty = git_state()
        provenance = {
            "git_commit": commit,
            "git_dirty": dirty,
            "config_hash": config_hash,
            "versions": package_versions(),
            "hardware": hardware(device),
            **scheduler_ids(),
        }
        run = wandb.init(
            project=project,
            entity=entity,
            name=run_name,
            id=run_id,
            resume="allow",
            dir=str(self.out_dir),
            mode=mode,
            config={**config, "provenance": provenance},
            # Our own console lines go to train.log untouched; the provenance above replaces W&B's git probing.
            settings=wandb.Settings(console="off", silent=True, disable_git=True, save_code=False),
        )
        run.define_metric("env_step")
        run.define_metric("*", step_metric="env_step")
        if mode == "offline":
            self._print(f"W&B run {run_id} offline in {self.out_dir / 'wandb'}; upload with `wandb sync` later")
        return run

    def _scalars(self, prefix: str, values: dict[str, Any]) -> None:
        numbers = {}
        for key, value in values.items():
            try:
                numbers[f"{prefix}/{key}"] = float(value)  # metrics.jsonl keeps non-finite values as strings
            except (TypeError, ValueError):
                continue
        if self._tensorboard is not None:
            for tag, number in numbers.items():
                self._tensorboard.add_scalar(tag, number, global_step=self.step)
        if self._wandb is not None:
            self._wandb.log({"env_step": self.step, **numbers})

    def _print(self, text: str) -> None:
        line = f"{_stamp()} {text}"
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def _write_progress(self, state: str) -> None:
        from dime.checkpoint import atomic_write_text  # lazily: this module stays importable without torch

        record = {
            "state": state,  # running / stopped / finished, as this process last knew it
            "step": self.step,
            "total_steps": self.total_steps,
            "checkpoint_step": self.checkpoint_step,
            "last_eval_step": self.last_eval[0] if self.last_eval else None,
            "last_score": self.last_eval[1] if self.last_eval else None,
            "train_steps_per_s": self.steps_per_s,
            "update_interval_s": 60 * self.options.progress_minutes,  # longest gap between updates while training
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated": time.time(),
        }
        atomic_write_text(self.out_dir / PROGRESS_FILE, json.dumps(record) + "\n")

    # ------------------------------------------------------------ log points
    def advance(self, step: int, train_seconds: float) -> None:
        """Once per env step, with the training time so far (evaluation excluded): the progress bar, and every
        ``progress_every`` steps or ``progress_minutes`` minutes a progress line (--quiet) and ``progress.json``."""
        self.step, self.train_seconds = step, train_seconds
        if self._bar is not None:
            self._bar.update(1)
        line_step, line_time = self._line_mark
        if step - line_step >= self.options.progress_every or (
            time.monotonic() - line_time >= 60 * self.options.progress_minutes
        ):
            self._update_rate()
            if self._bar is None:
                self._print(self._status_line())
            self._line_mark = (step, time.monotonic())
            self._write_progress("running")

    def evaluation(self, record: dict[str, Any], score: float) -> None:
        """One evaluation (an ``eval.csv`` row and its study score); it runs before the step's ``advance``."""
        self.step = record["step"]
        self.last_eval = (record["step"], score)
        self._scalars("eval", {"score": score, **{k: record[k] for k in EVAL_KEYS if k != "score"}})
        if self._bar is not None:
            self._bar.set_postfix_str(f"eval {score:.4g}", refresh=False)
        self._write_progress("running")

    def metrics(self, row: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` row (already written by the trainer)."""
        self.step = row["step"]
        self._update_rate()
        self._scalars("time", {"steps_per_s": row["steps_per_s"]})
        self._scalars(
            "train", {k.removeprefix("train_"): v for k, v in row.items() if k not in ("step", "steps_per_s")}
        )
        if self._bar is not None:
            self._bar.set_postfix_str(f"{row['steps_per_s']:.1f} steps/s | {self._eval_text()}", refresh=False)
        self._write_progress("running")

    def checkpoint(self, step: int) -> None:
        self.checkpoint_step = step
        self._write_progress("running")

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """End of this process's part of the run: ``summary`` when it finished, None when it stops to resume."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if summary is not None and self.quiet:
            self._print(
                f"finished: {self.step} env steps, final score {_number(summary['final_score'])}, "
                f"{summary['env_steps_per_s']:.1f} env steps/s, wall clock {format_duration(summary['wall_clock_s'])}"
            )
        self._write_progress("finished" if summary is not None else "stopped")
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            if summary is not None:
                self._wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float | str)})
            self._wandb.finish()

    # --------------------------------------------------------------- helpers
    def _update_rate(self) -> None:
        mark_step, mark_seconds = self._rate_mark
        if self.step > mark_step and self.train_seconds > mark_seconds:
            self.steps_per_s = (self.step - mark_step) / (self.train_seconds - mark_seconds)
            self._rate_mark = (self.step, self.train_seconds)

    def _eval_text(self) -> str:
        return f"eval {self.last_eval[1]:.4g} at step {self.last_eval[0]}" if self.last_eval else "no eval yet"

    def _status_line(self) -> str:
        remaining = self.total_steps - self.step
        eta = remaining / self.steps_per_s if self.steps_per_s else None
        speed = f"{self.steps_per_s:.1f}" if self.steps_per_s else "?"
        return (
            f"step {self.step}/{self.total_steps} ({100 * self.step / self.total_steps:.1f}%) | {self._eval_text()} "
            f"| {speed} env steps/s | ETA {format_duration(eta)} (excluding evaluation)"
        )
