"""Evaluate a trained policy from its run directory, optionally rendering a video.

    python -m dime.evaluate runs/dime/dog-run/0 --episodes 10 --video dog-run.mp4 --device cpu

Loads ``<run>/checkpoint.pt`` (with ``dime.checkpoint.load_checkpoint``, which checks that it belongs to the run's
``config.yaml``) and runs the trainer's own evaluation (``dime.trainer.evaluation_episodes``): the algorithm's rule
(DIME samples, SAC takes the mean action, ...) and the run's seed derivation. By default it repeats the run's last
evaluation (same evaluation index, so the same env and policy seeds, and the same number of episodes): the score
equals the logged one when the checkpoint holds the policy that was evaluated, i.e. when no update followed that
evaluation, and on the device the run trained on (CUDA kernels may differ in the last bits). ``--eval-index`` picks
other seeds. Evaluation runs eager even if the run trained with ``--compile``.

``--video out.mp4`` renders every evaluated step with MuJoCo's offscreen renderer (EGL by default; set
``MUJOCO_GL=osmesa`` for software rendering without EGL) and writes it with imageio-ffmpeg. Gym MuJoCo and DMC
use their default cameras, MyoSuite a side view of the hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from dime.cli import HelpFormatter, Parser
from dime.cli import fail as _fail

#: MyoSuite's default free camera sees the arm from afar; this one of its hand models shows the fingers and object.
MYO_CAMERA = "hand_side_inter"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    intro, _usage, *details = __doc__.split("\n\n")
    epilog = " ".join(details).replace("``", "")
    parser = Parser(prog="python -m dime.evaluate", description=intro, epilog=epilog, formatter_class=HelpFormatter)
    parser.add_argument("run_dir", help="a run directory of python -m dime.train (config.yaml, checkpoint.pt)")
    parser.add_argument("--episodes", type=_positive, help="episodes (default: the algorithm's eval_episodes)")
    parser.add_argument(
        "--eval-index",
        type=_index,
        help="evaluation index whose seeds to use (default: the run's last evaluation, to reproduce it)",
    )
    parser.add_argument("--video", metavar="OUT.mp4", help="render the evaluated episodes into this video file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def _myo_camera(env: Any) -> None:
    model = env.unwrapped.model
    if MYO_CAMERA in {model.camera(i).name for i in range(model.ncam)}:
        env.unwrapped.render_camera = MYO_CAMERA


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    for name in ("config.yaml", "checkpoint.pt"):
        if not (run_dir / name).is_file():
            _fail(f"{run_dir} has no {name}; give the directory of a run of python -m dime.train")
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        _fail(f"unknown device {args.device!r}; valid choices: auto, cpu, cuda, cuda:N")
    if args.video:
        missing = [m for m in ("imageio", "imageio_ffmpeg") if importlib.util.find_spec(m) is None]
        if missing:
            _fail(f"--video needs {' and '.join(missing)}: pip install imageio==2.38.1 imageio-ffmpeg==0.8.1")
        if not Path(args.video).resolve().parent.is_dir():
            _fail(f"cannot write the video {args.video!r}: its directory does not exist")
        # dime.tasks turns rendering off unless told otherwise; this must happen before dm_control is imported.
        if os.environ.get("MUJOCO_GL", "disable") == "disable":
            os.environ["MUJOCO_GL"] = "egl"

    import numpy as np
    import torch
    import yaml

    from dime._warnings import silence_third_party_noise
    from dime.checkpoint import CheckpointError, load_checkpoint
    from dime.tasks import make_env
    from dime.trainer import TrainConfig, Trainer, evaluation_episodes

    silence_third_party_noise()
    run = yaml.safe_load((run_dir / "config.yaml").read_text())
    try:
        # The same resolution of algorithm, task and hyperparameters as training, hence the same run identity.
        trainer = Trainer(
            TrainConfig(
                algo=run["algo"],
                task=run["task"],
                seed=run["seed"],
                total_steps=run["total_steps"],
                eval_every=run["eval_every"],
                device=args.device,
                agent=run["agent"],
            ),
            run_dir,
        )
    except (KeyError, TypeError, ValueError) as error:  # a config.yaml that is not a run's
        _fail(f"cannot evaluate {run_dir}: its config.yaml does not describe a run ({type(error).__name__}: {error})")
    if trainer.device.type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    try:
        state = load_checkpoint(run_dir / "checkpoint.pt", trainer._identity())
    except CheckpointError as error:
        _fail(str(error))
    history, checkpoint_step = state["eval_history"], state["step"]
    eval_index = args.eval_index if args.eval_index is not None else max(len(history) - 1, 0)
    episodes = args.episodes or trainer.agent_config.eval_episodes

    env = make_env(trainer.task, render_mode="rgb_array" if args.video else None)
    if args.video and trainer.task.suite == "myo":
        _myo_camera(env)
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    agent = trainer.agent_cls(trainer.task, obs_dim, act_dim, trainer.agent_config, trainer.device)
    agent.load_state_dict(state["agent"])
    del state  # the replay buffer in it can be large

    writer, frames = None, 0
    if args.video:
        import imageio.v2 as imageio

        fps = float(env.metadata.get("render_fps") or 30)
        writer = imageio.get_writer(args.video, fps=fps, codec="libx264", quality=7)

    def write_frame() -> None:
        nonlocal frames
        writer.append_data(env.render())
        frames += 1

    try:
        result = evaluation_episodes(
            agent,
            env,
            episodes,
            trainer.agent_config.eval_deterministic,
            trainer.config.seed,
            eval_index,
            on_step=write_frame if writer is not None else None,
        )
    finally:
        if writer is not None:
            writer.close()
        env.close()

    logged = history[eval_index] if eval_index < len(history) else None
    report = {
        "run_dir": str(run_dir),
        "algo": trainer.config.algo,
        "task": trainer.config.task,
        "seed": trainer.config.seed,
        "checkpoint_step": checkpoint_step,
        "eval_index": eval_index,
        "episodes": episodes,
        "deterministic": trainer.agent_config.eval_deterministic,
        "device": str(trainer.device),
        "score": trainer.score(result),
        **result,
        "logged_step": logged["step"] if logged else None,
        "logged_score": trainer.score(logged) if logged else None,
        "video": args.video,
        "video_frames": frames if args.video else None,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(_describe(report, trainer.task.metric, same_protocol=episodes == trainer.agent_config.eval_episodes))
    return 0


def _describe(report: dict[str, Any], metric: str, same_protocol: bool) -> str:
    rule = "mean action" if report["deterministic"] else "sampled actions"
    what = "final-step success" if metric == "success" else "mean return"
    lines = [
        f"{report['algo']} on {report['task']} seed {report['seed']} ({report['run_dir']}): evaluation index "
        f"{report['eval_index']}, {report['episodes']} episodes ({rule}), checkpoint at env step "
        f"{report['checkpoint_step']}, device {report['device']}",
        f"  score ({what}): {report['score']!r}; episode returns {report['episode_returns']}",
    ]
    if report["logged_score"] is not None and same_protocol:
        same = report["score"] == report["logged_score"]
        lines.append(
            f"  the run logged {report['logged_score']!r} for this evaluation (env step {report['logged_step']})"
            + (": reproduced" if same else "; a different score means updates followed that evaluation (see --help)")
        )
    if report["video"]:
        lines.append(f"  video: {report['video']} ({report['video_frames']} frames)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
