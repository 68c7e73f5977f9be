"""Throughput of every algorithm: env steps/s and gradient updates/s in the learning phase, side by side.

For each algorithm, each configuration (``paper``: the algorithm's defaults for the task; ``small``: narrow
networks, see ``SMALL``) and each compile mode (``off``: eager, the reference; ``on``: ``torch.compile`` of the
step functions; ``cudagraphs``: also CUDA graphs), the script fills the replay buffer with random transitions
from the real environment, runs a burn-in (reported separately, as it holds the compilation), then times
``--steps`` iterations of the trainer's per-step work: act, env.step, store, ``agent.update``. Evaluation is
excluded, as in the reference figures quoted in the issue (DIME's JAX code: ≈2.5 env steps/s at paper
configuration and ≈10 with 256-wide critics on a 2-core CPU, DMC cartpole-swingup).

    python benchmarks/throughput.py --algos sac dime --configs paper small --compile off on --steps 100
    python benchmarks/throughput.py --device cuda --algos dime --task dmc/dog-run --configs paper \
        --compile off on cudagraphs

Results go to ``results/benchmarks/throughput-<device>[-<label>].{md,json}`` with hardware and package versions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dime.agents import ALGORITHMS, Agent, load_algorithm
from dime.compilation import COMPILE_MODES
from dime.provenance import git_state, hardware, package_versions
from dime.replay import ReplayBuffer
from dime.tasks import get_task, make_env
from dime.trainer import resolve_device

#: Narrow networks for the "small" configuration (field names follow each algorithm's config dataclass).
SMALL: dict[str, dict[str, Any]] = {
    "sac": {"hidden": (64, 64)},
    "dime": {"critic_width": 256},
    "dime-gauss": {"critic_width": 256},
    "crossq": {"critic_hidden": (256, 256)},
    "bro": {"critic_width": 128, "actor_width": 64},
    "bro-fast": {"critic_width": 128, "actor_width": 64},
    "qsm": {"actor_hidden": (64, 64), "critic_hidden": (64, 64)},
    "diffusion-ql": {"actor_hidden": (64, 64), "critic_hidden": (64, 64)},
    "consistency-ac": {"actor_hidden": (64, 64), "critic_hidden": (64, 64)},
    "dipo": {"actor_hidden": (64, 64), "critic_hidden": (64, 64)},
    "qvpo": {"actor_hidden": (64, 64), "critic_hidden": (64, 64)},
    "dacer": {"hidden": (64, 64), "diffusion_hidden": (64, 64)},
}
PREFILL = 1000  # random transitions in the buffer before timing (BRN warm-up is irrelevant for speed)


@dataclass
class LearningLoop:
    """The trainer's per-step work after ``learning_starts`` (act, env.step, store, ``agent.update``), ready to time."""

    agent: Agent
    device: torch.device
    step: Callable[[int], None]  # one learning step; the argument is the index of the step

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, first: int, count: int) -> float:
        """Seconds taken by steps ``first .. first + count - 1`` (device work included)."""
        start = time.perf_counter()
        for index in range(first, first + count):
            self.step(index)
        self.synchronize()
        return time.perf_counter() - start

    def run_for(self, first: int, seconds: float) -> tuple[int, float]:
        """Steps from ``first`` until ``seconds`` have passed; returns (steps, seconds taken, device work included)."""
        start = time.perf_counter()
        index = first
        while time.perf_counter() - start < seconds:
            self.step(index)
            index += 1
        self.synchronize()
        return index - first, time.perf_counter() - start


def prepare(
    algo: str,
    task_name: str,
    overrides: dict[str, Any],
    device: torch.device,
    mode: str,
    capacity: int = 100_000,
    prefill: int = PREFILL,
) -> LearningLoop:
    """An agent (compiled for ``mode``) and a replay buffer holding ``prefill`` random transitions of the real
    environment, wrapped as the trainer's learning step. The buffer is a ring of ``capacity`` rows."""
    torch.manual_seed(0)
    task = get_task(task_name)
    env = make_env(task, seed=0)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    cls = load_algorithm(algo)
    config = cls.default_config(task).replace(**overrides, learning_starts=prefill)
    agent = cls(task, obs_dim, act_dim, config, device)
    if mode != "off":
        torch._dynamo.reset()  # each measurement pays its own compilation
        agent.compile_updates(mode)
    buffer = ReplayBuffer(obs_dim, act_dim, max(capacity, prefill + 1), device)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)

    def env_step(action: np.ndarray) -> None:
        nonlocal obs
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        obs = env.reset()[0] if terminated or truncated else next_obs

    for _ in range(prefill):
        env_step(rng.uniform(-1, 1, act_dim).astype(np.float32))

    def learning_step(index: int) -> None:
        with torch.no_grad():
            action = agent.act(torch.as_tensor(obs, device=device).unsqueeze(0), deterministic=False)
        env_step(action[0].cpu().numpy())
        agent.update(buffer, prefill + index)

    return LearningLoop(agent, device, learning_step)


def measure(
    algo: str, task_name: str, overrides: dict[str, Any], steps: int, burn_in: int, device: torch.device, mode: str
) -> dict[str, float]:
    loop = prepare(algo, task_name, overrides, device, mode, capacity=PREFILL + burn_in + steps + 1)
    burn_in_seconds = loop.run(0, burn_in)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    updates_before = getattr(loop.agent, "gradient_steps", None)
    seconds = loop.run(burn_in, steps)
    gradient_steps = (loop.agent.gradient_steps - updates_before) if updates_before is not None else float("nan")
    result = {
        "env_steps_per_s": steps / seconds,
        "updates_per_s": gradient_steps / seconds,
        "seconds": seconds,
        "burn_in_seconds": burn_in_seconds,
    }
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--task", default="dmc/cartpole-swingup")
    parser.add_argument("--configs", nargs="+", default=["paper", "small"], choices=["paper", "small"])
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=COMPILE_MODES)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the workflow's per-job default)")
    parser.add_argument("--steps", type=int, default=100, help="timed learning steps per measurement")
    parser.add_argument("--burn-in", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions (A/B/A/B); medians reported")
    parser.add_argument(
        "--reference", nargs="*", default=[], metavar="CONFIG=STEPS_PER_S", help="e.g. paper=2.5: a ratio column"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--label", default="", help="suffix of the report's file name, e.g. paper")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    rows = []
    source = git_state()
    for repeat in range(args.repeat):
        for algo in args.algos:
            for config_name in args.configs:
                overrides = SMALL[algo] if config_name == "small" else {}
                for mode in args.compile:
                    load = os.getloadavg()[0]
                    result = measure(algo, args.task, overrides, args.steps, args.burn_in, device, mode)
                    row = {"algo": algo, "config": config_name, "mode": mode, "repeat": repeat, "load_1min": load}
                    rows.append({**row, **result})
                    print(
                        f"{algo:15s} {config_name:6s} {mode:10s} {result['env_steps_per_s']:9.2f} env steps/s "
                        f"{result['updates_per_s']:9.2f} updates/s  burn-in {result['burn_in_seconds']:.0f} s  "
                        f"load {load:.1f}",
                        flush=True,
                    )
                    # After every row: a long sweep keeps what it measured.
                    write_report(rows, args, device, source)
    write_report(rows, args, device, source)


def write_report(
    rows: list[dict[str, Any]], args: argparse.Namespace, device: torch.device, source: tuple[str | None, bool | None]
) -> None:
    """``source``: the checkout's (commit, dirty) taken once when the sweep started, i.e. of the code it measured."""
    commit, dirty = source
    references = {k: float(v) for k, _, v in (item.partition("=") for item in args.reference)}
    meta = {
        "task": args.task,
        "steps": args.steps,
        "burn_in": args.burn_in,
        "threads": args.threads,
        "repeat": args.repeat,
        "hardware": hardware(device),
        "versions": package_versions(),
        "git_commit": commit,
        "git_dirty": dirty,
        "command": "python benchmarks/throughput.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "out" and not (k in ("label", "reference") and not v)
        ),
    }
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["algo"], r["config"], r["mode"]), []).append(r)
    medians = {key: statistics.median(r["env_steps_per_s"] for r in group) for key, group in groups.items()}
    loads = [r["load_1min"] for r in rows]
    lines = [
        f"# Throughput on {meta['hardware'].get('gpu', meta['hardware']['cpu'])} ({device})",
        "",
        f"Task `{args.task}`, learning phase, evaluation excluded, {args.steps} timed steps after {args.burn_in} "
        f"burn-in steps (the burn-in column includes compilation), {args.threads} torch thread(s); "
        f"{args.repeat} interleaved repetition(s) of every measurement, medians shown (each repetition in the "
        f"JSON). Load average (1 min) before the measurements: {min(loads):.1f}–{max(loads):.1f}. "
        f"Command: `{meta['command']}`. Commit {commit}{' (dirty)' if dirty else ''}. "
        f"torch {meta['versions'].get('torch')}.",
        "",
        "| algorithm | config | compile | env steps/s | repetitions | updates/s | × eager | "
        + ("÷ reference | " if references else "")
        + "burn-in s |",
        "|---|---|---|---:|---|---:|---:|" + ("---:|" if references else "") + "---:|",
    ]
    for (algo, config_name, mode), group in groups.items():
        median = medians[(algo, config_name, mode)]
        eager = medians.get((algo, config_name, "off"))
        ratio = f"{median / eager:.2f}" if eager else ""
        reference = references.get(config_name)
        cells = [
            f"{median:.2f}",
            " ".join(f"{r['env_steps_per_s']:.2f}" for r in group),
            f"{statistics.median(r['updates_per_s'] for r in group):.2f}",
            ratio,
            *([f"{median / reference:.2f}" if reference else ""] if references else []),
            f"{group[0]['burn_in_seconds']:.0f}",
        ]
        lines.append(f"| {algo} | {config_name} | {mode} | {' | '.join(cells)} |")
    if references:
        listed = ", ".join(f"{k} {v:g}" for k, v in references.items())
        lines += ["", f"Reference env steps/s (÷ reference column): {listed}."]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "-".join(filter(None, ["throughput", device.type, args.label]))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {stem.with_suffix('.md')}")


if __name__ == "__main__":
    main()
