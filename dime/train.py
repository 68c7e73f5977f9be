"""Command line for one training run.

    python -m dime.train --algo dime --task dmc/cheetah-run --seed 0 --steps 1e6 --out runs/dime/cheetah-run/0

Rerunning the same command resumes from ``<out>/checkpoint.pt``; a finished run (``summary.json`` present) is not
retrained. ``--config <run>/config.yaml --out <new dir>`` re-creates a run (algorithm, task, seed, steps, eval
cadence, compile mode and every hyperparameter; flags given on the command line win). User mistakes (unknown
algorithm/task/config key, a value out of range, bad numbers, a device this machine lacks, unwritable directory,
malformed config) end with one ``error:`` line and exit status 2 before the output directory is created or changed.
A corrupt or foreign checkpoint, and a directory another training is using, are refused the same way, and every
file already in the directory stays as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from dime._warnings import silence_third_party_noise
from dime.agents import ALGORITHMS, ConfigError, UnknownAlgorithmError
from dime.checkpoint import CheckpointError, RunDirectoryBusy, locked_run_directory
from dime.cli import HelpFormatter
from dime.cli import Parser as _Parser
from dime.cli import fail as _fail
from dime.compilation import COMPILE_MODES
from dime.run_logging import LogOptions, parse_wandb_target
from dime.tasks import UnknownTaskError

#: Keys of a run's config.yaml that ``--config`` turns into defaults of these options.
_RUN_KEYS = {"algo": "algo", "task": "task", "seed": "seed", "total_steps": "steps", "eval_every": "eval_every"}


def _count(text: str) -> int:
    """Accept 1000000, 1e6 or 1_000_000; reject fractions and negatives."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(value)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer seed, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer seed, got {text!r}")
    return value


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            _fail(f"--set expects key=value, got {pair!r}")
        try:
            overrides[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            _fail(f"--set {key}: cannot parse value {raw!r}")
    return overrides


def _positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, got {text!r}")
    return value


def _wandb_target(text: str) -> str:
    try:
        parse_wandb_target(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _load_config_file(path: str) -> dict[str, Any]:
    """A YAML mapping of agent hyperparameters, or a run's config.yaml (its ``agent:`` section plus run keys)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        _fail(f"cannot read config file {path!r}: {error.strerror}")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        _fail(f"config file {path!r} is not valid YAML{where}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        _fail(f"config file {path!r} must hold a mapping of hyperparameters, got {type(data).__name__}")
    return data


def _split_config(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(option defaults, agent overrides) of a config file: a run's config.yaml gives both, a plain mapping of
    hyperparameters only the overrides."""
    if not isinstance(data.get("agent"), dict):
        return {}, data
    defaults = {option: data[key] for key, option in _RUN_KEYS.items() if key in data}
    if data.get("compile") in COMPILE_MODES:
        defaults["compile"] = data["compile"]
    return defaults, data["agent"]


def _check_writable(out: Path) -> None:
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        _fail(f"output path {str(out)!r} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        _fail(f"output directory {str(out)!r} is not writable")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m dime.train",
        description=__doc__.split("\n\n")[0],
        epilog="Outputs in --out: eval.csv, metrics.jsonl, tensorboard/, progress.json, config.yaml, checkpoint.pt, "
        "summary.json (last; marks a finished run). See the README, section 'One run'.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--algo", help=f"algorithm: {', '.join(ALGORITHMS)}, or module:Class")
    parser.add_argument("--task", help="task, e.g. dmc/dog-run, gym/Humanoid-v4, myo/key-turn-hard (--list-tasks)")
    parser.add_argument("--seed", type=_seed, default=0, help="run seed (networks, warm-up actions, env resets)")
    parser.add_argument("--steps", type=_count, default=1_000_000, help="total env steps (1e6 accepted)")
    parser.add_argument("--out", help="run directory (outputs, checkpoint); rerunning into it resumes")
    parser.add_argument("--eval-every", type=_count, default=3000, help="env steps between evaluations")
    parser.add_argument("--checkpoint-every", type=_count, default=10_000, help="env steps between checkpoints")
    parser.add_argument("--log-every", type=_count, default=1000, help="env steps between metrics.jsonl rows")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=_count, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument(
        "--compile",
        default="off",
        choices=COMPILE_MODES,
        help="off: eager reference; on: torch.compile the updates and action sampling; cudagraphs: also capture "
        "CUDA graphs (CUDA only)",
    )
    parser.add_argument(
        "--config",
        help="YAML file of agent hyperparameter overrides, or a run's config.yaml to re-create that run (its "
        "algorithm, task, seed, steps, eval cadence, compile mode and hyperparameters; other flags override it)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="agent hyperparameter overrides (repeatable; later values win)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar: one line on start/resume and one every --progress-every steps or "
        "--progress-minutes minutes (batch jobs, train.log, SLURM output)",
    )
    parser.add_argument(
        "--progress-every", type=_count, default=LogOptions.progress_every, help="--quiet: env steps between lines"
    )
    parser.add_argument(
        "--progress-minutes",
        type=_positive_minutes,
        default=LogOptions.progress_minutes,
        help="--quiet: at most this many minutes between lines",
    )
    parser.add_argument(
        "--wandb",
        type=_wandb_target,
        metavar="PROJECT[/ENTITY]",
        help="also log to Weights & Biases (pip install 'dime-repro[wandb]'); offline unless WANDB_API_KEY or "
        "WANDB_MODE is set; a resumed run continues the same W&B run",
    )
    parser.add_argument("--list-tasks", action="store_true", help="print every task name and exit")
    parser.add_argument("--list-algos", action="store_true", help="print every algorithm name and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.config:
        defaults, overrides = _split_config(_load_config_file(args.config))
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)  # the file's values are defaults: flags given on the command line win
    if args.list_algos:
        print("\n".join(ALGORITHMS))
        return 0
    if args.list_tasks:
        from dime.tasks import registry

        print("\n".join(sorted(registry())))
        return 0
    for name in ("algo", "task", "out"):
        if getattr(args, name) is None:
            _fail(f"--{name} is required")
    overrides.update(_parse_sets(args.set))
    if args.wandb:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            _fail("--wandb needs the wandb package: pip install 'dime-repro[wandb]' (or wandb==0.31.0)")
    out = Path(args.out)
    _check_writable(out)
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        _fail(f"unknown device {args.device!r}; valid choices: auto, cpu, cuda, cuda:N")

    import torch

    from dime.trainer import Preempted, TrainConfig, Trainer

    silence_third_party_noise()

    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        config = TrainConfig(
            algo=args.algo,
            task=args.task,
            seed=args.seed,
            total_steps=args.steps,
            eval_every=args.eval_every,
            checkpoint_every=args.checkpoint_every,
            log_every=args.log_every,
            device=args.device,
            compile=args.compile,
            agent=overrides,
        )
        log_options = LogOptions(args.wandb, args.progress_every, args.progress_minutes)
        trainer = Trainer(config, out, quiet=args.quiet, log_options=log_options)
    except (UnknownAlgorithmError, UnknownTaskError, ConfigError, ValueError) as error:
        _fail(str(error))
    try:
        with locked_run_directory(out):
            finished = _finished_summary(out, trainer.config_hash, args.steps)
            if finished is not None:
                print(f"{out}: already finished (final score {finished['final_score']}); nothing to do")
                return 0
            summary = trainer.run()
    except (CheckpointError, RunDirectoryBusy, ConfigError) as error:
        _fail(str(error))
    except Preempted as stop:
        print(f"{out}: {stop}; rerun the same command to resume", file=sys.stderr)
        return 128 + stop.signum
    if not args.quiet:
        score = summary["final_score"]
        print(
            f"{args.algo} on {args.task} (seed {args.seed}): final score "
            f"{'none' if score is None else format(score, '.4g')}, "
            f"{summary['env_steps_per_s']:.1f} env steps/s, {summary['wall_clock_s']:.0f} s"
        )
    return 0


def _finished_summary(out: Path, config_hash: str, steps: int) -> dict[str, Any] | None:
    """The summary of a run finished in ``out`` with at least ``steps`` steps, else None; a summary with fewer
    steps is removed (the longer run resumes from the checkpoint and writes a new one)."""
    path = out / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"warning: {path} is unreadable; the run resumes from its checkpoint and rewrites it", file=sys.stderr)
        path.unlink()
        return None
    if summary.get("config_hash") != config_hash:
        _fail(f"{out} holds a finished run with another configuration; use another --out directory")
    if summary.get("total_steps", 0) >= steps:
        return summary
    path.unlink()
    return None


if __name__ == "__main__":
    sys.exit(main())
