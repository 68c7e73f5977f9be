"""Where a study stands: every expected run with its state, step, last score and ETA, and the study's totals.

    python -m dime.status results/quick          # or just: python -m dime.status quick
    python -m dime.status results/paper --only running,failed

The expected runs come from the study file (``config/studies/<name>.yaml``, expanded by
``workflow/scripts/studylib.py``), their directories are ``<results>/runs/<label>/<task>/seed<k>/``. A run is

* **finished**: ``summary.json`` with a finite final score and the study's budget reached;
* **running**: its process holds the run's lock (:mod:`dime.run_lock`), or ``progress.json`` names a live process
  on this host, or (another host) was updated recently;
* **failed**: the last attempt in ``train.log`` ended with an error or a traceback, the process died before its
  first checkpoint, or the final score is not finite;
* **resumable at step k**: a checkpoint at env step k and no live process (rerunning the workflow continues it);
* **not started**: none of the above.

Nothing is loaded but small text files (no torch), so it is quick on a study of a thousand runs.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dime.cli import HelpFormatter, Parser
from dime.cli import fail as _fail
from dime.run_lock import run_lock_holder
from dime.run_logging import START_MARKERS, format_duration, read_progress

REPO_ROOT = Path(__file__).resolve().parent.parent
STATES = ("finished", "running", "resumable", "failed", "not started")
#: Beyond its own update interval, how long a run on another host may stay silent (an evaluation) and still count
#: as running.
SILENCE_ALLOWANCE_S = 600.0
_LOG_TAIL_BYTES = 256 * 1024


@dataclass(frozen=True)
class RunStatus:
    state: str  # one of STATES
    step: int | None  # env steps done (finished/running), the checkpoint's step (resumable), or the last known
    target: int  # the study's budget for this run
    score: float | None  # final score (finished) or the last evaluation's score
    eta_s: float | None  # training time left at the run's last measured speed (evaluation excluded)
    speed: float | None  # env steps/s, evaluation excluded
    detail: str = ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _progress_alive(progress: dict[str, Any], now: float) -> bool:
    if progress.get("state") != "running":
        return False
    if progress.get("host") == socket.gethostname():
        return _pid_alive(int(progress["pid"]))
    allowed = 3 * float(progress.get("update_interval_s", 300.0)) + SILENCE_ALLOWANCE_S
    return now - float(progress.get("updated", 0.0)) < allowed


def last_attempt_error(log_path: Path) -> str | None:
    """The error that ended the last attempt logged in ``train.log`` (its last line), or None.

    An attempt starts at a start/resume line (:data:`dime.run_logging.START_MARKERS`); one that failed before its
    first step (e.g. a corrupt checkpoint) is logged after the previous attempt's lines, so it counts too.
    """
    try:
        with log_path.open("rb") as handle:
            handle.seek(max(log_path.stat().st_size - _LOG_TAIL_BYTES, 0))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    starts = [i for i, line in enumerate(lines) if any(marker in line for marker in START_MARKERS)]
    attempt = [line.rstrip() for line in lines[starts[-1] + 1 if starts else 0 :] if line.strip()]
    if any(line.startswith(("Traceback (most recent call last)", "error: ")) for line in attempt):
        return attempt[-1]
    return None


def _eta(target: int, step: int | None, speed: float | None) -> float | None:
    if step is None or not speed:
        return None
    return max(target - step, 0) / speed


def run_status(directory: str | Path, target_steps: int, now: float | None = None) -> RunStatus:
    """The state of the run in ``directory`` for a study that expects ``target_steps`` env steps of it."""
    directory = Path(directory)
    now = time.time() if now is None else now
    summary_path = directory / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        score, steps = summary.get("final_score"), int(summary["total_steps"])
        speed = summary.get("env_steps_per_s")
        if score is None or not math.isfinite(score):
            return RunStatus("failed", steps, target_steps, None, None, speed, f"final score {score!r}")
        if steps < target_steps:
            return RunStatus(
                "resumable",
                steps,
                target_steps,
                score,
                _eta(target_steps, steps, speed),
                speed,
                f"finished at {steps} steps; the study asks for {target_steps}",
            )
        return RunStatus("finished", steps, target_steps, score, None, speed)

    progress = read_progress(directory) or {}
    step, speed, score = progress.get("step"), progress.get("train_steps_per_s"), progress.get("last_score")
    checkpoint_step = progress.get("checkpoint_step")
    holder = run_lock_holder(directory)
    if holder is not None or (progress and _progress_alive(progress, now)):
        pid = holder if holder is not None else progress.get("pid")
        host = progress.get("host")
        where = f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
        return RunStatus("running", step, target_steps, score, _eta(target_steps, step, speed), speed, where)

    error = last_attempt_error(directory / "train.log")
    has_checkpoint = (directory / "checkpoint.pt").exists()
    if error is not None:
        return RunStatus("failed", step, target_steps, score, None, speed, error[:160])
    if has_checkpoint:
        at = checkpoint_step if checkpoint_step is not None else step
        eta = _eta(target_steps, at, speed)
        detail = "" if progress.get("state") == "stopped" else "stopped without a message (killed?)"
        return RunStatus("resumable", at, target_steps, score, eta, speed, detail)
    if progress:
        detail = f"ended at env step {step} before its first checkpoint, without a message (killed?)"
        return RunStatus("failed", step, target_steps, score, None, speed, detail)
    return RunStatus("not started", None, target_steps, None, None, None)


# ------------------------------------------------------------------------------------------------------- CLI
def _studylib() -> Any:
    scripts = REPO_ROOT / "workflow" / "scripts"
    if not (scripts / "studylib.py").is_file():
        _fail(f"{scripts}/studylib.py not found: run dime.status from a checkout of the repository")
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))
    import studylib

    return studylib


def _locate(target: str, study_file: str | None) -> tuple[Path, Path]:
    """(results directory of the study, study file) from ``results/<study>`` or a study name."""
    import yaml

    path = Path(target)
    if path.is_dir() or os.sep in target:
        results = path
    else:
        config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
        base = Path(config.get("results_dir", "results"))
        results = (base if base.is_absolute() else REPO_ROOT / base) / target
    study = Path(study_file) if study_file else REPO_ROOT / "config" / "studies" / f"{results.name}.yaml"
    if not study.is_file():
        _fail(f"no study file {study} for {target!r}; name the study file with --study")
    return results, study


def _score_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def format_table(rows: list[dict[str, str]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m dime.status", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("target", help="the study's results directory (results/<study>) or the study's name")
    parser.add_argument("--study", help="study file (default: config/studies/<name of the results directory>.yaml)")
    parser.add_argument("--only", help=f"comma-separated states to list ({', '.join(STATES)}); totals stay complete")
    args = parser.parse_args(argv)
    only = set(STATES) if not args.only else {s.strip() for s in args.only.split(",")}
    if not only <= set(STATES):
        _fail(f"--only: unknown state {sorted(only - set(STATES))[0]!r}; valid: {', '.join(STATES)}")
    studylib = _studylib()
    results, study_path = _locate(args.target, args.study)
    try:
        study = studylib.load_study(study_path, check_registry=False)
    except studylib.StudyError as error:
        _fail(str(error))

    runs_dir = results / "runs"
    now = time.time()
    statuses = [(run, run_status(run.directory(runs_dir), run.steps, now)) for run in study.runs.values()]
    rows = []
    for run, status in statuses:
        if status.state not in only:
            continue
        step = "-" if status.step is None else f"{status.step}/{status.target}"
        state = f"resumable at {status.step}" if status.state == "resumable" else status.state
        rows.append(
            {
                "label": run.label,
                "task": run.task,
                "seed": str(run.seed),
                "state": state,
                "step": step,
                "score": _score_text(status.score),
                "ETA": format_duration(status.eta_s) if status.state == "running" else "",
                "detail": status.detail,
            }
        )
    print(f"study {study.name} ({study_path}), runs in {runs_dir}")
    if rows:
        print(format_table(rows, ["label", "task", "seed", "state", "step", "score", "ETA", "detail"]))
    print(_totals(statuses))
    return 0


def _totals(statuses: list[tuple[Any, RunStatus]]) -> str:
    counts = Counter(status.state for _, status in statuses)
    expected = sum(status.target for _, status in statuses)
    done = sum(min(status.step or 0, status.target) for _, status in statuses)
    # Time left at the speed measured for each (label, suite): a run's own, else the mean of its peers'.
    peers: dict[tuple[str, str], list[float]] = {}
    for run, status in statuses:
        if status.speed:
            peers.setdefault((run.label, run.suite), []).append(status.speed)
    left, unknown = 0.0, 0
    for run, status in statuses:
        if status.state == "finished":
            continue
        speeds = peers.get((run.label, run.suite))
        speed = status.speed or (sum(speeds) / len(speeds) if speeds else None)
        if speed:
            left += max(status.target - (status.step or 0), 0) / speed
        else:
            unknown += 1
    states = ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
    line = f"{len(statuses)} runs: {states}; {done}/{expected} env steps ({100 * done / max(expected, 1):.1f}%)"
    if unknown == len(statuses) - counts["finished"]:
        line += "; training time left: unknown until a run of each algorithm and suite has measured its speed"
    elif counts["finished"] < len(statuses):
        line += f"; training time left ≈ {format_duration(left)} of compute at the measured speeds (summed over runs)"
        line += f", + {unknown} runs with no speed measured yet" if unknown else ""
    return line


if __name__ == "__main__":
    sys.exit(main())
