"""One command for a person with one GPU: does this suite work here, and how fast is it?

    python benchmarks/gpu_check.py --budget-s 480      # on a CUDA machine: about 8 minutes, compilation included
    python benchmarks/gpu_check.py --device cpu        # the tiny CPU form (seconds; how CI tests this script)

In this order, each step only if its estimated cost still fits in ``--budget-s`` (what does not fit, or cannot run
here, is listed as skipped with the reason, never dropped):

1. **checks** of DIME (the CUDA tests, run without pytest: ``tests/compile_checks.py``): no host synchronisation
   in ``act`` and ``update`` (``torch.cuda.set_sync_debug_mode("error")``) in eager, ``on`` and ``cudagraphs``
   modes; compiled updates equal to eager ones over 200 updates from identical states, with no recompilation,
   CUDA-graph re-recording or skip after warm-up; agent state moving between CPU and GPU;
2. **throughput** of DIME at paper configuration on ``dmc/humanoid-run`` (the task of the paper's runtime figure)
   in eager, ``on`` and ``cudagraphs`` modes: env steps/s of the trainer's learning step (act, env step, store,
   update; evaluation excluded) over a fixed window after a burn-in that holds the compilation;
3. **several runs per GPU**: 1, 2, 4 and 8 DIME processes sharing the device in its best mode, started together
   after their burn-in; aggregate env steps/s and peak GPU memory per run (the allocator's reserved memory; the
   CUDA context, a few hundred MB per process, comes on top);
4. every **other algorithm** at paper configuration in DIME's best mode;
5. a **training run** checkpointed on the GPU that resumes on the CPU and vice versa; the other algorithms' checks.

Every measurement runs in its own process (a crash or hang costs that step only). Writes
``results/benchmarks/throughput-<device>-<gpu>.{md,json}`` (hardware, torch and CUDA versions, command) and prints
one summary line: DIME at paper configuration, env steps/s, hours per 1M env steps and the ratio to the paper's
4.45 h. Needs torch, numpy, the simulators and this repository only (no pytest, Snakemake, rliable, MyoSuite,
TensorBoard, W&B or matplotlib), so it runs on a GPU node set up from local wheels (README, "GPUs and clusters").
On the CPU (``--device cpu``) networks are tiny and windows short: it tests the machinery, not the speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PAPER_HOURS_PER_MILLION = 4.45  # DIME, 16 diffusion steps, humanoid-run (the paper's runtime figure)
OTHER_ALGOS = (
    "crossq",
    "bro",
    "bro-fast",
    "sac",
    "dime-gauss",
    "qsm",
    "diffusion-ql",
    "consistency-ac",
    "dipo",
    "qvpo",
    "dacer",
)


@dataclass
class Settings:
    """What one run of the check measures; the CPU form shrinks everything."""

    device: str
    task: str
    tiny: bool
    modes: tuple[str, ...]
    runs: tuple[int, ...]
    burn_in: int
    window_s: float
    threads: int
    #: first guesses of each step's cost in seconds, replaced by what the same kind of step took here
    estimates: dict[str, float] = field(default_factory=dict)


def settings_for(device: str, task: str, runs: list[int] | None, window_s: float | None, threads: int) -> Settings:
    if device == "cpu":
        return Settings(
            device="cpu",
            task=task,
            tiny=True,
            modes=("off", "on"),
            runs=tuple(runs or (1, 2)),
            burn_in=3,
            window_s=window_s or 2.0,
            threads=threads,
            estimates={
                "checks": 15,
                "throughput-off": 12,
                "throughput-compiled": 150,
                "runs": 15,
                "resume": 60,
                "warm": 300,
            },
        )
    return Settings(
        device=device,
        task=task,
        tiny=False,
        modes=("off", "on", "cudagraphs"),
        runs=tuple(runs or (1, 2, 4, 8)),
        burn_in=30,
        window_s=window_s or 15.0,
        threads=threads,
        estimates={
            "checks": 100,
            "warm": 150,
            "throughput-off": 40,
            "throughput-compiled": 60,
            "runs": 60,
            "resume": 60,
        },
    )


# ------------------------------------------------------------------------------------------------ worker
def tiny_overrides(algo: str) -> dict[str, Any]:
    from tests.compile_checks import TINY

    return {"batch_size": 32, **TINY[algo]}


def work(spec: dict[str, Any]) -> dict[str, Any]:
    """One step of the plan, in this (child) process."""
    import torch

    torch.set_num_threads(spec["threads"])
    kind = spec["kind"]
    if kind == "checks":
        return run_checks(spec)
    if kind == "resume":
        from tests.compile_checks import check_training_resumes_across_devices

        outcomes = []
        for first, second in (("cuda", "cpu"), ("cpu", "cuda")):
            with tempfile.TemporaryDirectory() as out:
                outcomes.append(
                    outcome(
                        f"training run {first} -> {second}", check_training_resumes_across_devices, out, first, second
                    )
                )
        return {"checks": outcomes}
    if kind == "throughput":
        return run_throughput(spec)
    if kind == "warm":
        return warm_cache(spec)
    raise ValueError(f"unknown step kind {kind!r}")


def outcome(name: str, check: Any, *args: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        check(*args)
        return {"name": name, "ok": True, "seconds": time.perf_counter() - start}
    except Exception as error:  # a failed check is a result, the next check still runs
        message = " ".join(f"{type(error).__name__}: {error}".split())
        return {"name": name, "ok": False, "seconds": time.perf_counter() - start, "message": message[:600]}


def run_checks(spec: dict[str, Any]) -> dict[str, Any]:
    from tests import compile_checks

    algo, device = spec["algo"], spec["device"]
    outcomes = []
    outcomes.append(outcome(f"{algo} off: no host sync", compile_checks.check_no_host_syncs, algo, device))
    for mode in spec["modes"]:
        if mode != "off":
            what = "compiled == eager, no recompilation, re-recording or host sync"
            outcomes.append(
                outcome(f"{algo} {mode}: {what}", compile_checks.check_compiled_matches_eager, algo, device, mode)
            )
    if device == "cuda":
        for source, target in (("cuda", "cpu"), ("cpu", "cuda")):
            outcomes.append(
                outcome(
                    f"{algo}: state {source} -> {target}",
                    compile_checks.check_state_crosses_devices,
                    algo,
                    source,
                    target,
                )
            )
    return {"checks": outcomes}


def warm_cache(spec: dict[str, Any]) -> dict[str, Any]:
    """Compile an algorithm at paper configuration and take a few steps: Inductor's on-disk caches (FX graphs,
    AOTAutograd) then serve the measurements, which spend seconds instead of minutes on compilation."""
    import torch

    from benchmarks.throughput import prepare

    started = time.perf_counter()
    loop = prepare(spec["algo"], spec["task"], {}, torch.device(spec["device"]), spec["mode"], capacity=2_000)
    loop.run(0, 3)
    return {"warmed": f"{spec['algo']} {spec['mode']}", "seconds": time.perf_counter() - started}


def run_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from benchmarks.throughput import PREFILL, prepare

    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as the trainer runs on CUDA (JAX's default TF32)
    overrides = tiny_overrides(spec["algo"]) if spec["tiny"] else {}
    started = time.perf_counter()
    prefill = 200 if spec["tiny"] else PREFILL
    loop = prepare(spec["algo"], spec["task"], overrides, device, spec["mode"], capacity=50_000, prefill=prefill)
    loop.run(0, spec["burn_in"])
    burn_in_s = time.perf_counter() - started
    barrier = spec.get("barrier")
    if barrier:  # start the window together with the other processes sharing the device
        Path(barrier["dir"], f"ready-{barrier['index']}").touch()
        deadline = time.monotonic() + barrier["timeout_s"]
        while len(list(Path(barrier["dir"]).glob("ready-*"))) < barrier["parties"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the other {barrier['parties'] - 1} runs were not ready in time")
            time.sleep(0.01)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    updates_before = getattr(loop.agent, "gradient_steps", 0)
    steps, seconds = loop.run_for(spec["burn_in"], spec["window_s"])
    result = {
        "env_steps": steps,
        "seconds": seconds,
        "env_steps_per_s": steps / seconds,
        "updates_per_s": (getattr(loop.agent, "gradient_steps", 0) - updates_before) / seconds,
        "burn_in_s": burn_in_s,
    }
    if device.type == "cuda":
        result["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
        result["peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


# ------------------------------------------------------------------------------------------------ parent
@dataclass
class Step:
    name: str
    kind: str  # the estimate key
    specs: list[dict[str, Any]]  # one per process (several for runs sharing the device)
    record: dict[str, Any] = field(default_factory=dict)


class Planner:
    """Runs steps in order while the budget lasts; keeps every outcome, skipped steps included."""

    def __init__(self, settings: Settings, budget_s: float):
        self.settings = settings
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.steps: list[Step] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def skip(self, step: Step, reason: str) -> Step:
        step.record = {"status": "skipped", "reason": reason}
        self.steps.append(step)
        print(f"[gpu-check] skipped {step.name}: {reason}", flush=True)
        return step

    def run(self, step: Step) -> Step:
        estimate = self.settings.estimates[step.kind]
        if estimate > self.left():
            return self.skip(step, f"needs about {estimate:.0f} s, {max(self.left(), 0):.0f} s of the budget left")
        print(f"[gpu-check] {step.name} (about {estimate:.0f} s) ...", flush=True)
        started = time.monotonic()
        timeout = max(self.left(), 1.0)
        with tempfile.TemporaryDirectory() as barrier:
            for index, spec in enumerate(step.specs):
                if len(step.specs) > 1 and spec["kind"] == "throughput":
                    spec["barrier"] = {"dir": barrier, "index": index, "parties": len(step.specs), "timeout_s": timeout}
            # Several processes at once share the CPUs for compilation too: Inductor's pool of compile workers
            # (one process per CPU by default, each holding a copy of torch) is divided between them.
            compile_threads = max(1, (os.cpu_count() or 1) // len(step.specs))
            processes = [spawn(spec, compile_threads if len(step.specs) > 1 else None) for spec in step.specs]
            results = [collect(process, timeout, started) for process in processes]
        took = time.monotonic() - started
        self.settings.estimates[step.kind] = took
        failed = [r for r in results if "error" in r]
        step.record = {"status": "failed" if failed else "done", "seconds": took, "results": results}
        self.steps.append(step)
        print(f"[gpu-check] {step.name}: {summarise(step)}", flush=True)
        return step


def spawn(spec: dict[str, Any], compile_threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONWARNINGS": "ignore"}
    if compile_threads is not None:
        env["TORCHINDUCTOR_COMPILE_THREADS"] = str(compile_threads)
    env.setdefault("MUJOCO_GL", "disable")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def collect(process: subprocess.Popen, timeout: float, started: float) -> dict[str, Any]:
    try:
        stdout, stderr = process.communicate(timeout=max(timeout - (time.monotonic() - started), 1.0))
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return {"error": f"stopped after {time.monotonic() - started:.0f} s: the budget ran out"}
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    return {"error": f"exit status {process.returncode}: {tail[-600:]}"}


def summarise(step: Step) -> str:
    record = step.record
    if record["status"] == "skipped":
        return f"skipped ({record['reason']})"
    parts = []
    for result in record["results"]:
        if "error" in result:
            parts.append(f"error: {result['error']}")
        elif "checks" in result:
            passed = sum(c["ok"] for c in result["checks"])
            parts.append(f"{passed}/{len(result['checks'])} checks passed")
        elif "warmed" in result:
            parts.append(f"{result['warmed']} compiled in {result['seconds']:.0f} s")
        else:
            parts.append(f"{result['env_steps_per_s']:.1f} env steps/s")
    return "; ".join(parts) + f" ({record['seconds']:.0f} s)"


def throughput_spec(settings: Settings, algo: str, mode: str) -> dict[str, Any]:
    return {
        "kind": "throughput",
        "algo": algo,
        "mode": mode,
        "task": settings.task,
        "device": settings.device,
        "tiny": settings.tiny,
        "burn_in": settings.burn_in,
        "window_s": settings.window_s,
        "threads": settings.threads,
    }


def checks_spec(settings: Settings, algo: str) -> dict[str, Any]:
    modes = settings.modes if settings.device == "cuda" else ("off",)
    return {"kind": "checks", "algo": algo, "device": settings.device, "modes": modes, "threads": settings.threads}


def rate(step: Step | None) -> float | None:
    if step is None or step.record.get("status") != "done":
        return None
    return sum(r["env_steps_per_s"] for r in step.record["results"])


def run_plan(settings: Settings, planner: Planner, other_algos: list[str]) -> dict[str, Any]:
    cuda = settings.device == "cuda"
    dime_checks = planner.run(Step("DIME checks", "checks", [checks_spec(settings, "dime")]))
    failed_modes = {
        c["name"].split()[1].rstrip(":")
        for r in dime_checks.record.get("results", [])
        for c in r.get("checks", [])
        if not c["ok"]
    }
    guess = "cudagraphs" if cuda else "on"  # the best mode is not measured yet; the cache is a speed-up only
    warm = [
        {
            "kind": "warm",
            "algo": "dime",
            "mode": m,
            "device": settings.device,
            "task": settings.task,
            "threads": settings.threads,
        }
        for m in settings.modes
        if m != "off"
    ]
    warm += [{**warm[0], "algo": algo, "mode": guess} for algo in other_algos] if warm else []
    if settings.tiny:
        planner.skip(Step("compile every algorithm in parallel", "warm", []), "CPU form: nothing to time compiled")
    else:
        planner.run(Step("compile every algorithm in parallel (fills Inductor's caches)", "warm", warm))
    dime_modes: dict[str, Step] = {}
    for mode in ("off", "on", "cudagraphs"):
        name = f"DIME throughput, {mode}"
        if mode not in settings.modes:
            planner.skip(Step(name, "throughput-compiled", []), "needs CUDA")
            continue
        kind = "throughput-off" if mode == "off" else "throughput-compiled"
        dime_modes[mode] = planner.run(Step(name, kind, [throughput_spec(settings, "dime", mode)]))
    measured = {mode: rate(step) for mode, step in dime_modes.items() if rate(step) is not None}
    trusted = {mode: value for mode, value in measured.items() if mode == "off" or mode not in failed_modes}
    best = max(trusted, key=trusted.get) if trusted else "off"
    runs: dict[int, Step] = {}
    for count in settings.runs:
        if count == 1 and best in dime_modes:  # the same measurement as DIME's own in that mode
            runs[count] = dime_modes[best]
            continue
        specs = [throughput_spec(settings, "dime", best) for _ in range(count)]
        runs[count] = planner.run(Step(f"{count} DIME run(s) sharing the device, {best}", "runs", specs))
    others: dict[str, Step] = {}
    for algo in other_algos:
        kind = "throughput-off" if best == "off" else "throughput-compiled"
        others[algo] = planner.run(Step(f"{algo} throughput, {best}", kind, [throughput_spec(settings, algo, best)]))
    resume = {"kind": "resume", "threads": settings.threads}
    if cuda:
        planner.run(Step("training run checkpointed on one device, resumed on the other", "resume", [resume]))
    else:
        planner.skip(Step("training run checkpointed on one device, resumed on the other", "resume", []), "needs CUDA")
    for algo in other_algos:
        planner.run(Step(f"{algo} checks", "checks", [checks_spec(settings, algo)]))
    return {"best_mode": best, "dime_modes": dime_modes, "runs": runs, "others": others}


# ------------------------------------------------------------------------------------------------ report
def gpu_slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug.removeprefix("nvidia-") or "gpu"


def machine(settings: Settings) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
    }
    if settings.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), driver=nvidia_driver())
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def summary_line(settings: Settings, plan: dict[str, Any], planner: Planner, report: Path) -> str:
    checks = [c for s in planner.steps for r in s.record.get("results", []) for c in r.get("checks", [])]
    passed = sum(c["ok"] for c in checks)
    skipped = sum(s.record["status"] == "skipped" for s in planner.steps)
    config = "tiny configuration (CPU form: tests the machinery, not the speed)" if settings.tiny else "paper config"
    mode = plan["best_mode"]
    value = rate(plan["dime_modes"].get(mode))
    head = f"GPU check: DIME {config} on {settings.task}, {mode}: "
    if value is None:
        head += "no throughput measured"
    else:
        hours = 1e6 / value / 3600
        head += (
            f"{value:.1f} env steps/s, {hours:.2f} h per 1M env steps "
            f"({hours / PAPER_HOURS_PER_MILLION:.2f}x the paper's {PAPER_HOURS_PER_MILLION} h)"
        )
    return f"{head}; checks {passed}/{len(checks)} passed; {skipped} steps skipped; report {report}"


def write_report(settings: Settings, plan: dict[str, Any], planner: Planner, args: argparse.Namespace) -> Path:
    from dime.provenance import git_state

    info = machine(settings)
    commit, dirty = git_state()
    slug = gpu_slug(info["gpu"]) if settings.device == "cuda" else "gpu-check"
    stem = args.out / f"throughput-{settings.device}-{slug}"
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/gpu_check.py " + " ".join(args.argv)
    elapsed = time.monotonic() - planner.start
    line = summary_line(settings, plan, planner, stem.with_suffix(".md"))
    gpu_text = f"{info['gpu']} ({info['gpu_memory_gb']} GB)" if "gpu" in info else "no GPU"
    lines = [
        f"# GPU check on {info.get('gpu', info['cpu'])} ({settings.device})",
        "",
        line,
        "",
        f"Command: `{command.strip()}` ({elapsed:.0f} s of a {args.budget_s:.0f} s budget). Commit {commit}"
        f"{' (dirty)' if dirty else ''}. Python {info['python']}, torch {info['torch']}, CUDA {info['cuda']}"
        f"{', driver ' + info['driver'] if info.get('driver') else ''}; "
        f"{gpu_text}, "
        f"{info['cpu']} ({info['cpu_count']} CPUs). Task `{settings.task}`; env steps/s of the trainer's "
        f"learning step (act, env step, store, update; evaluation excluded) over {settings.window_s:g} s after "
        f"{settings.burn_in} burn-in steps (burn-in includes compilation); {settings.threads} torch thread(s) "
        "per process; TF32 matmuls on CUDA, as the trainer runs.",
        "",
        "## DIME, paper configuration" if not settings.tiny else "## DIME, tiny configuration",
        "",
        "| compile | env steps/s | updates/s | h per 1M env steps | × paper (4.45 h) | burn-in s | peak GPU MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, step in plan["dime_modes"].items():
        lines.append(throughput_row(mode, step))
    lines += [
        "",
        f"## Several DIME runs sharing the device ({plan['best_mode']})",
        "",
        "| runs | aggregate env steps/s | per run | × one run | h per 1M env steps per run | peak GPU MB per run |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    single = rate(plan["runs"].get(1))
    for count, step in plan["runs"].items():
        lines.append(runs_row(count, step, single))
    lines += [
        "",
        f"## Other algorithms, {'tiny' if settings.tiny else 'paper'} configuration ({plan['best_mode']})",
        "",
        "| algorithm | env steps/s | updates/s | h per 1M env steps | burn-in s | peak GPU MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for algo, step in plan["others"].items():
        lines.append(throughput_row(algo, step, paper_column=False))
    lines += ["", "## Checks", "", "| check | result | s |", "|---|---|---:|"]
    for step in planner.steps:
        for result in step.record.get("results", []):
            for check in result.get("checks", []):
                verdict = "passed" if check["ok"] else f"FAILED: {check['message']}"
                lines.append(f"| {check['name']} | {verdict} | {check['seconds']:.0f} |")
            if "error" in result and step.kind in ("checks", "resume"):
                lines.append(f"| {step.name} | ERROR: {result['error']} | |")
    lines += ["", "## Skipped or failed steps", ""]
    trouble = [s for s in planner.steps if s.record["status"] != "done"]
    lines += [f"* {s.name}: {trouble_text(s)}" for s in trouble] or ["None."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    serial = {
        "summary": line,
        "command": command.strip(),
        "commit": commit,
        "dirty": dirty,
        "machine": info,
        "settings": {k: v for k, v in vars(settings).items() if k != "estimates"},
        "budget_s": args.budget_s,
        "elapsed_s": elapsed,
        "best_mode": plan["best_mode"],
        "steps": [{"name": s.name, "kind": s.kind, **s.record} for s in planner.steps],
    }
    stem.with_suffix(".json").write_text(json.dumps(serial, indent=2) + "\n")
    return stem.with_suffix(".md")


def trouble_text(step: Step) -> str:
    if step.record["status"] == "skipped":
        return f"skipped: {step.record['reason']}"
    errors = [r["error"] for r in step.record["results"] if "error" in r]
    return f"failed: {'; '.join(errors)}"


def throughput_row(label: str, step: Step, paper_column: bool = True) -> str:
    if step.record.get("status") != "done":
        cells = ["–"] * (6 if paper_column else 5)
        return f"| {label} | {' | '.join(cells)} |"
    (result,) = step.record["results"]
    value = result["env_steps_per_s"]
    hours = 1e6 / value / 3600
    memory = f"{result['peak_reserved_mb']:.0f}" if "peak_reserved_mb" in result else "–"
    paper = [f"{hours / PAPER_HOURS_PER_MILLION:.2f}"] if paper_column else []
    cells = [f"{value:.1f}", f"{result['updates_per_s']:.1f}", f"{hours:.2f}", *paper]
    return f"| {label} | {' | '.join(cells)} | {result['burn_in_s']:.0f} | {memory} |"


def runs_row(count: int, step: Step, single: float | None) -> str:
    if step.record.get("status") != "done":
        return f"| {count} | – | – | – | – | – |"
    results = step.record["results"]
    total = sum(r["env_steps_per_s"] for r in results)
    per_run = total / count
    speedup = f"{total / single:.2f}" if single else "–"
    memory = max((r.get("peak_reserved_mb", 0.0) for r in results), default=0.0)
    memory_text = f"{memory:.0f}" if memory else "–"
    return f"| {count} | {total:.1f} | {per_run:.1f} | {speedup} | {1e6 / per_run / 3600:.2f} | {memory_text} |"


# -------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        spec = json.loads(argv[1])
        try:
            result = work(spec)
        except Exception as error:
            traceback.print_exc()
            result = {"error": " ".join(f"{type(error).__name__}: {error}".split())[:600]}
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check")
    parser.add_argument("--task", default="dmc/humanoid-run")
    parser.add_argument("--runs", type=int, nargs="+", help="processes sharing the device (default 1 2 4 8)")
    parser.add_argument("--window-s", type=float, help="timed seconds per throughput measurement")
    parser.add_argument("--algos", nargs="*", default=list(OTHER_ALGOS), choices=OTHER_ALGOS, help="besides DIME")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args(argv)
    args.argv = [a for a in argv if a]
    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if device == "auto":
        device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch.cuda.is_available() is False on this machine", file=sys.stderr)
        return 2
    settings = settings_for(device, args.task, args.runs, args.window_s, args.threads)
    planner = Planner(settings, args.budget_s)
    plan = run_plan(settings, planner, args.algos)
    report = write_report(settings, plan, planner, args)
    print(summary_line(settings, plan, planner, report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
