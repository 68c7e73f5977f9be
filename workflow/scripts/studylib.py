"""Study files: loading, validation with one-line errors, and expansion into training runs.

Shared by the Snakefile (``workflow/rules/common.smk``), the aggregation scripts and the tests, so that the runs the
workflow trains and the runs the tables expect come from one definition.

A study (``config/studies/<name>.yaml``, schema ``workflow/schemas/study.schema.yaml``) names algorithm entries
(label -> algo + overrides) and experiments (tasks x labels x seeds at a step budget). A run is identified by
(label, task, seed); when several experiments list the same run it is trained once, to the largest budget, and each
experiment scores it by its last evaluation at or before its own budget.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

WORKFLOW_DIR = Path(__file__).resolve().parent.parent
SCHEMA_PATH = WORKFLOW_DIR / "schemas" / "study.schema.yaml"
CONFIG_SCHEMA_PATH = WORKFLOW_DIR / "schemas" / "config.schema.yaml"
SUITES = ("dmc", "gym", "myo")
SUITE_TITLES = {"dmc": "DeepMind Control", "gym": "Gym", "myo": "MyoSuite"}
#: How tables and plots name the registered algorithms (dime.agents.ALGORITHMS). Kept here rather than next to the
#: registry so that the aggregation scripts need no torch; a study label may set its own ``name:``.
ALGORITHM_NAMES = {
    "dime": "DIME",
    "dime-gauss": "DIME-Gauss",
    "sac": "SAC",
    "crossq": "CrossQ",
    "bro": "BRO",
    "bro-fast": "BRO (Fast)",
    "qsm": "QSM",
    "diffusion-ql": "Diffusion-QL",
    "consistency-ac": "Consistency-AC",
    "dipo": "DIPO",
    "qvpo": "QVPO",
    "dacer": "DACER",
}


class StudyError(ValueError):
    """A study file that cannot be used; the message is one line naming the offending key."""


@dataclass(frozen=True)
class Run:
    """One training job: a label (algorithm entry) on a task with a seed, trained to ``steps`` env steps."""

    label: str
    algo: str
    overrides: tuple[tuple[str, Any], ...]
    task: str
    seed: int
    steps: int
    runtime_factor: float = 1.0

    @property
    def suite(self) -> str:
        return suite_of(self.task)

    def directory(self, runs_dir: str | Path) -> Path:
        return Path(runs_dir) / self.label / self.task / f"seed{self.seed}"


@dataclass(frozen=True)
class Experiment:
    """A comparison: which labels run on which of its tasks, with which seeds, scored at ``steps``."""

    name: str
    title: str
    steps: int
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    coverage: dict[str, tuple[str, ...]] = field(hash=False)  # label -> tasks it runs on (study order)

    @property
    def labels(self) -> list[str]:
        return list(self.coverage)

    def suites(self) -> list[str]:
        present = {suite_of(t) for t in self.tasks}
        return [s for s in SUITES if s in present]

    def suite_tasks(self, suite: str) -> list[str]:
        return [t for t in self.tasks if suite_of(t) == suite]


@dataclass
class Study:
    name: str
    path: Path
    data: dict[str, Any]  # validated, defaults filled in
    experiments: list[Experiment]
    runs: dict[tuple[str, str, int], Run]  # (label, task, seed) -> run, in study order

    @property
    def labels(self) -> list[str]:
        return list(self.data["algorithms"])

    @property
    def names(self) -> dict[str, str]:
        """Label -> the name tables and plots show (see :func:`display_name`)."""
        return {label: display_name(label, spec) for label, spec in self.data["algorithms"].items()}

    @property
    def focus(self) -> str:
        return self.data["focus"]

    @property
    def bootstrap(self) -> dict[str, Any]:
        return self.data["bootstrap"]

    def run(self, label: str, task: str, seed: int | str) -> Run:
        return self.runs[(label, task, int(seed))]


def display_path(path: str | Path) -> str:
    """A path as results should show it: relative to the repository when inside it (no machine-specific prefix)."""
    resolved = Path(path).resolve()
    root = WORKFLOW_DIR.parent
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def display_name(label: str, spec: dict[str, Any]) -> str:
    """A label's ``name:``; else its algorithm's name when the label is the algorithm's registered name (``crossq``
    -> CrossQ); else the label itself (e.g. an ablation ``dime-alpha-1e-3`` without a ``name:``)."""
    if "name" in spec:
        return spec["name"]
    return ALGORITHM_NAMES.get(label, label) if label == spec["algo"] else label


def suite_of(task: str) -> str:
    return task.split("/", 1)[0]


def resolve_study_path(study: str, config_dir: str | Path) -> Path:
    """``quick`` -> ``<config_dir>/studies/quick.yaml``; anything ending in .yaml/.yml is taken as a path."""
    if study.endswith((".yaml", ".yml")):
        return Path(study)
    return Path(config_dir) / "studies" / f"{study}.yaml"


@dataclass(frozen=True)
class ReportRequest:
    """``snakemake --report PATH`` on the command line; ``after_run`` with ``--report-after-run``."""

    path: str
    after_run: bool


def report_request(argv: list[str]) -> ReportRequest | None:
    """The ``--report`` of a snakemake command line (``--report PATH``, ``--report=PATH``, or bare ``--report``,
    which Snakemake writes to report.html), or None."""
    for index, arg in enumerate(argv):
        if arg.startswith("--report="):
            path = arg.split("=", 1)[1]
        elif arg == "--report":
            following = argv[index + 1] if index + 1 < len(argv) else ""
            path = following if following and not following.startswith("-") else "report.html"
        else:
            continue
        return ReportRequest(path, "--report-after-run" in argv)
    return None


def report_study(report: str, results_dir: str, study: str, explicit: bool, config_dir: str | Path) -> str:
    """The study a report at ``report`` documents (``<results_dir>/<study>/...``): the path's study when the command
    line names none, ``study`` when it names the same one; a report outside ``results_dir`` keeps ``study``.
    A path whose study differs from ``--config study=...``, or is not a study under config/studies/, raises
    :class:`StudyError` with one line."""
    inside = Path(os.path.abspath(report))
    results = Path(os.path.abspath(results_dir))
    if not inside.is_relative_to(results) or len(inside.relative_to(results).parts) < 2:
        return study
    name = inside.relative_to(results).parts[0]
    if explicit:
        chosen = resolve_study_path(study, config_dir).stem
        if chosen != name:
            raise StudyError(
                f"--report {report} lies in the results of study '{name}' but --config study={study} reports study "
                f"'{chosen}': drop --config study, or write the report to {results_dir}/{chosen}/"
            )
        return study
    if not resolve_study_path(name, config_dir).is_file():
        known = ", ".join(sorted(p.stem for p in (Path(config_dir) / "studies").glob("*.yaml")))
        raise StudyError(
            f"--report {report}: '{name}' is not a study under config/studies/ ({known}); "
            "name the study with --config study=<name or path to its YAML>"
        )
    return name


def _key_path(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fill_defaults(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """Insert the schema's ``default:`` values for missing object properties (recursively)."""
    if "$ref" in schema:
        ref = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            ref = ref[part]
        schema = {**ref, **{k: v for k, v in schema.items() if k != "$ref"}}
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _fill_defaults(value[key], sub, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in props:
                    value[key] = _fill_defaults(value[key], extra, root)
    return value


def validate_schema(data: Any, source: str, schema_path: Path = SCHEMA_PATH, what: str = "study") -> dict[str, Any]:
    """JSON-schema check with defaults filled in; the most relevant violation becomes one line naming its key."""
    import jsonschema

    schema = yaml.safe_load(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = _key_path(list(error.absolute_path))
        message = " ".join(error.message.split())
        if len(message) > 200:
            message = message[:197] + "..."
        place = f"key '{where}'" if where else "top level"
        raise StudyError(f"invalid {what} {source}: {place}: {message}")
    return _fill_defaults(data, schema, schema)


def seed_list(spec: int | list[int]) -> tuple[int, ...]:
    return tuple(range(spec)) if isinstance(spec, int) else tuple(spec)


def load_normalisation(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def load_study(
    study_path: str | Path,
    normalisation: dict[str, Any] | None = None,
    check_registry: bool = True,
) -> Study:
    """Read, validate and expand a study file; every problem raises :class:`StudyError` with one line.

    ``check_registry`` resolves task names against :mod:`dime.tasks` and algorithm names against
    :data:`dime.agents.ALGORITHMS` (imports torch), and builds each label's algorithm config with its ``set:``
    overrides for each of its tasks, so a misspelt key or a value out of range fails here (and ``snakemake -n``)
    instead of inside every training job of that label; ``normalisation`` (config/normalisation.yaml) lets the
    check reject Gym tasks that have no normalisation reference.
    """
    path = Path(study_path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise StudyError(f"cannot read study file {source}: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise StudyError(f"study file {source} is not valid YAML{where}") from None
    data = validate_schema(raw if raw is not None else {}, source)

    algorithms: dict[str, dict[str, Any]] = data["algorithms"]
    if data["focus"] not in algorithms:
        raise StudyError(
            f"invalid study {source}: key 'focus': label {data['focus']!r} is not defined under algorithms"
        )
    shown: dict[str, str] = {}
    for label, spec in algorithms.items():
        name = display_name(label, spec)
        if name in shown:
            raise StudyError(
                f"invalid study {source}: key 'algorithms.{label}': its display name {name!r} is also label "
                f"{shown[name]!r}'s; give one of them a distinct name:"
            )
        shown[name] = label
    if check_registry:
        _check_registry(data, source, normalisation)

    experiments: list[Experiment] = []
    runs: dict[tuple[str, str, int], Run] = {}
    for name, spec in data["experiments"].items():
        seeds = seed_list(spec.get("seeds", data["seeds"]))
        coverage: dict[str, tuple[str, ...]] = {}
        for index, entry in enumerate(spec["algorithms"]):
            key = f"experiments.{name}.algorithms[{index}]"
            label = entry if isinstance(entry, str) else entry["label"]
            if label not in algorithms:
                defined = ", ".join(algorithms)
                raise StudyError(f"invalid study {source}: key '{key}': unknown label {label!r} (defined: {defined})")
            if label in coverage:
                raise StudyError(f"invalid study {source}: key '{key}': label {label!r} is listed twice")
            tasks = spec["tasks"] if isinstance(entry, str) else entry["tasks"]
            outside = [t for t in tasks if t not in spec["tasks"]]
            if outside:
                raise StudyError(
                    f"invalid study {source}: key '{key}.tasks': {outside[0]!r} is not one of the experiment's tasks"
                )
            coverage[label] = tuple(t for t in spec["tasks"] if t in tasks)
            entry_spec = algorithms[label]
            overrides = tuple(sorted(entry_spec.get("set", {}).items()))
            for task in coverage[label]:
                for seed in seeds:
                    previous = runs.get((label, task, seed))
                    steps = max(spec["steps"], previous.steps if previous else 0)
                    runs[(label, task, seed)] = Run(
                        label, entry_spec["algo"], overrides, task, seed, steps, entry_spec["runtime_factor"]
                    )
        experiments.append(
            Experiment(name, spec.get("title", name), spec["steps"], tuple(spec["tasks"]), seeds, coverage)
        )
    return Study(path.stem, path, data, experiments, runs)


def _check_registry(data: dict[str, Any], source: str, normalisation: dict[str, Any] | None) -> None:
    # Importing dm_control (via the task registry) makes absl call logging.basicConfig, which would duplicate every
    # line Snakemake logs; keep the root logger as it was.
    # Without a display, dm_control's automatic OpenGL probe also prints a GLFW warning; the check renders nothing.
    root_handlers = list(logging.getLogger().handlers)
    set_gl = "MUJOCO_GL" not in os.environ
    if set_gl:
        os.environ["MUJOCO_GL"] = "disable"
    # Training jobs run `python -m dime.train` in the working directory, so a `module:Class` algorithm imports from
    # there; the `snakemake` entry point does not put it on sys.path by itself.
    workdir = os.getcwd()
    add_workdir = workdir not in sys.path
    if add_workdir:
        sys.path.insert(0, workdir)
    try:
        _check_names(data, source, normalisation)
        _check_overrides(data, source)
    finally:
        logging.getLogger().handlers[:] = root_handlers
        if set_gl:
            os.environ.pop("MUJOCO_GL", None)
        if add_workdir:
            sys.path.remove(workdir)


def _check_names(data: dict[str, Any], source: str, normalisation: dict[str, Any] | None) -> None:
    from dime.agents import ALGORITHMS
    from dime.tasks import UnknownTaskError, get_task

    for label, spec in data["algorithms"].items():
        if ":" not in spec["algo"] and spec["algo"] not in ALGORITHMS:
            raise StudyError(
                f"invalid study {source}: key 'algorithms.{label}.algo': unknown algorithm {spec['algo']!r} "
                f"(registered: {', '.join(ALGORITHMS)}; or give module:Class)"
            )
    gym_refs = (normalisation or {}).get("gym", {})
    for name, spec in data["experiments"].items():
        for index, task in enumerate(spec["tasks"]):
            key = f"experiments.{name}.tasks[{index}]"
            try:
                get_task(task)
            except UnknownTaskError as error:
                raise StudyError(f"invalid study {source}: key '{key}': {error}") from None
            if normalisation is not None and suite_of(task) == "gym" and task not in gym_refs:
                raise StudyError(
                    f"invalid study {source}: key '{key}': Gym task {task!r} has no normalisation reference in "
                    "config/normalisation.yaml (add random and reference returns)"
                )


def _check_overrides(data: dict[str, Any], source: str) -> None:
    """Build every label's config for every task it runs on, as its training jobs will."""
    from dime.agents import ConfigError, UnknownAlgorithmError, load_algorithm
    from dime.tasks import get_task

    tasks: dict[str, list[str]] = {}  # label -> the tasks it runs on, in study order
    for spec in data["experiments"].values():
        for entry in spec["algorithms"]:
            label = entry if isinstance(entry, str) else entry["label"]
            for task in spec["tasks"] if isinstance(entry, str) else entry["tasks"]:
                if task in spec["tasks"] and task not in tasks.setdefault(label, []):
                    tasks[label].append(task)
    for label, spec in data["algorithms"].items():
        try:
            algorithm = load_algorithm(spec["algo"])
        except UnknownAlgorithmError as error:
            raise StudyError(f"invalid study {source}: key 'algorithms.{label}.algo': {error}") from None
        overrides = spec.get("set", {})
        for task in tasks.get(label, []):
            try:
                algorithm.default_config(get_task(task)).replace(**overrides)
            except ConfigError as error:
                key = f"algorithms.{label}.set" + (f".{error.key}" if error.key in overrides else "")
                raise StudyError(f"invalid study {source}: key '{key}': {error} (on {task})") from None


def override_args(overrides: tuple[tuple[str, Any], ...]) -> list[str]:
    """``--set`` tokens ``key=value``; values are YAML/JSON literals the trainer parses with yaml.safe_load."""
    tokens = []
    for key, value in overrides:
        text = value if isinstance(value, str) else json.dumps(value)
        tokens.append(f"{key}={text}")
    return tokens


def runtime_minutes(run: Run, resources: dict[str, Any]) -> int:
    """SLURM time limit: suite hours per 1M steps x steps x algorithm factor x sharing slowdown x margin, at least
    the minimum. The sharing slowdown (``runs_per_gpu`` runs on one GPU) defaults to ``runs_per_gpu``."""
    slowdown = resources.get("sharing_slowdown") or resources.get("runs_per_gpu", 1)
    hours = resources["hours_per_million_steps"][run.suite] * run.steps / 1e6 * run.runtime_factor * slowdown
    minutes = math.ceil(hours * 60 * resources["runtime_margin"])
    return max(minutes, resources["min_runtime_minutes"])


def normalise(task: str, score: float, normalisation: dict[str, Any]) -> float:
    """The suite's normalised score (config/normalisation.yaml): DMC /1000, MyoSuite success as is, Gym affine."""
    suite = suite_of(task)
    if suite == "dmc":
        return score / normalisation["dmc"]["scale"]
    if suite == "myo":
        return score
    ref = normalisation["gym"][task]
    return (score - ref["random"]) / (ref["reference"] - ref["random"])
