"""Published reference curves: the sources of config/reference.yaml, fetched as a user gets them, verified, and read
as the arrays the reproduction check compares with.

    python workflow/scripts/reference_data.py --reference-config config/reference.yaml \
        --study config/studies/paper.yaml --cache resources/reference --out results/paper/reference_files.json \
        [--reference-dir DIR] [--mirror URL] [--required]

Fetching (rule fetch_reference): every file that the study's checked (label, task) pairs need is taken from the cache
(``<cache>/<folder>/<file>``, which only ever holds verified files) or downloaded from its pinned URL: up to
``ATTEMPTS`` tries with back-off on connection errors, timeouts, truncated transfers and HTTP 429/5xx; the body is
checked against the pinned SHA-256 and renamed into place (atomic), so an interrupted or tampered download never
lands in the cache. A verified file is never downloaded again. With ``--reference-dir`` the files are read from that
local copy (same layout) and verified in place; nothing is downloaded. A file that cannot be had is one line on
stderr naming the file and its URL, and an entry with that reason in the manifest (``--out``, read by
workflow/scripts/reproduction.py, which then says why those rows are empty); ``--required`` makes it an error.

Reading (``load_curve``): (env steps (T,), values (seeds, T)) of one (source, task). Each seed's evaluations are
put on the source's declared grid (column ``round(step / grid)``, so a seed evaluated at step 0 and another at step 1
share a column; the column's step is the most common actual one) and only the columns every seed has are kept. The
declared grid is checked against the data.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import studylib
import yaml
from studylib import StudyError

SCHEMA_PATH = studylib.WORKFLOW_DIR / "schemas" / "reference.schema.yaml"
DIME_NPY_FILES = ("env_interacts.npy", "mean_return.npy")
ATTEMPTS = 3
BACKOFF_S = (1.0, 4.0)
TIMEOUT_S = 60.0
MANIFEST_FORMAT = 1


class ReferenceDataError(RuntimeError):
    """A reference file or curve that cannot be used; the message is one line naming it."""


@dataclass(frozen=True)
class ReferenceFile:
    """One published file: where it is downloaded from, its pinned SHA-256, and its place in the cache."""

    name: str  # path below the repository's base_url, e.g. dmc_dog_run/mean_return.npy
    url: str
    sha256: str
    folder: str  # the repository's folder in the cache and in reference_dir

    @property
    def relative(self) -> str:
        return f"{self.folder}/{self.name}"


# ------------------------------------------------------------------------------------------- configuration
def load_reference_config(path: str | Path) -> dict[str, Any]:
    """config/reference.yaml, schema-checked and cross-checked; problems raise StudyError with one line."""
    source = str(path)
    data = studylib.validate_schema(yaml.safe_load(Path(path).read_text()), source, SCHEMA_PATH, "reference config")
    repositories = data["repositories"]
    for name, repository in repositories.items():
        if not repository["base_url"].startswith(data["host"] + "/"):
            raise StudyError(
                f"invalid reference config {source}: key 'repositories.{name}.base_url': not on {data['host']}"
            )
    for name, spec in data["sources"].items():
        key = f"sources.{name}"
        if spec["repository"] not in repositories:
            raise StudyError(
                f"invalid reference config {source}: key '{key}.repository': unknown repository "
                f"{spec['repository']!r} (defined: {', '.join(repositories)})"
            )
        files = repositories[spec["repository"]]["files"]
        if spec["format"] == "simbav2-csv":
            for field in ("file", "metric"):
                if field not in spec:
                    raise StudyError(f"invalid reference config {source}: key '{key}': simbav2-csv needs '{field}'")
            needed = {task: [spec["file"]] for task in spec["tasks"]}
        else:
            needed = {task: [f"{e['curve']}/{n}" for n in DIME_NPY_FILES] for task, e in spec["tasks"].items()}
        for task, names in needed.items():
            for file in names:
                if file not in files:
                    raise StudyError(
                        f"invalid reference config {source}: key '{key}.tasks.{task}': file {file!r} has no SHA-256 "
                        f"under repositories.{spec['repository']}.files"
                    )
            if spec["format"] == "simbav2-csv" and studylib.suite_of(task) not in spec["metric"]:
                suite = studylib.suite_of(task)
                raise StudyError(
                    f"invalid reference config {source}: key '{key}.metric': no metric for suite {suite!r}"
                )
    return data


def checked_labels(study: studylib.Study, reference: dict[str, Any]) -> dict[str, str]:
    """Label -> reference source for every label of the study that is checked, in study order."""
    mapping = study.data["reproduction"]["references"]
    for label, source in mapping.items():
        if source is not None and source not in reference["sources"]:
            raise StudyError(
                f"invalid study {study.path}: key 'reproduction.references.{label}': unknown reference source "
                f"{source!r} (config/reference.yaml defines: {', '.join(reference['sources'])})"
            )
    return {label: mapping[label] for label in study.labels if mapping.get(label)}


def overlay_labels(study: studylib.Study, reference: dict[str, Any]) -> list[str]:
    """The checked labels that run at least one task their source has a curve for: each gets an overlay plot."""
    return [
        label
        for label, source in checked_labels(study, reference).items()
        if any(task in reference["sources"][source]["tasks"] for task in label_tasks(study, label))
    ]


def label_tasks(study: studylib.Study, label: str) -> list[str]:
    """The tasks a label runs on, in study order."""
    return list(dict.fromkeys(run.task for run in study.runs.values() if run.label == label))


def source_files(reference: dict[str, Any], source_name: str, task: str) -> list[ReferenceFile]:
    """The files holding the source's curve of ``task`` (none when the source has no curve for it)."""
    source = reference["sources"][source_name]
    entry = source["tasks"].get(task)
    if entry is None:
        return []
    repository = reference["repositories"][source["repository"]]
    if source["format"] == "dime-npy":
        names = [f"{entry['curve']}/{name}" for name in DIME_NPY_FILES]
    else:
        names = [source["file"]]
    return [
        ReferenceFile(name, f"{repository['base_url']}/{name}", repository["files"][name], repository["folder"])
        for name in names
    ]


def needed_files(study: studylib.Study, reference: dict[str, Any]) -> list[ReferenceFile]:
    """Every file the study's reproduction check reads, once each, in study order."""
    files: dict[str, ReferenceFile] = {}
    for label, source_name in checked_labels(study, reference).items():
        for task in label_tasks(study, label):
            for file in source_files(reference, source_name, task):
                files.setdefault(file.relative, file)
    return list(files.values())


# -------------------------------------------------------------------------------------------------- fetching
def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename (dime.checkpoint has the same, but importing it loads torch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Unreachable(ReferenceDataError):
    """The host did not answer at all (no HTTP status): the other files from it are not attempted."""


def download(url: str) -> bytes:
    """The body of ``url``. Transient failures are retried; a 4xx status (other than 429) is final."""
    reason = ""
    for attempt in range(ATTEMPTS):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            reason = f"HTTP {error.code} {error.reason}"
            if error.code != 429 and error.code < 500:
                raise ReferenceDataError(reason) from None
            unreachable = False
        except urllib.error.URLError as error:
            reason, unreachable = f"{error.reason}", True
        except (TimeoutError, ConnectionError, http.client.HTTPException) as error:
            reason, unreachable = f"{type(error).__name__}: {error}", False
        if attempt + 1 < ATTEMPTS:
            time.sleep(BACKOFF_S[attempt])
    failure = f"{reason} (after {ATTEMPTS} attempts)"
    raise (_Unreachable if unreachable else ReferenceDataError)(failure)


def mirrored(url: str, host: str, mirror: str) -> str:
    return mirror.rstrip("/") + url.removeprefix(host) if mirror else url


def fetch_file(file: ReferenceFile, cache: Path, url: str) -> tuple[Path, str]:
    """(path in the cache, 'cached' or 'downloaded'); a file already there is re-read and verified, not downloaded."""
    target = cache / file.relative
    if target.is_file() and sha256_hex(target.read_bytes()) == file.sha256:
        return target, "cached"
    try:
        data = download(url)
    except _Unreachable as error:
        raise _Unreachable(f"reference file {file.relative}: download from {url} failed: {error}") from None
    except ReferenceDataError as error:
        raise ReferenceDataError(f"reference file {file.relative}: download from {url} failed: {error}") from None
    digest = sha256_hex(data)
    if digest != file.sha256:
        raise ReferenceDataError(
            f"reference file {file.relative} downloaded from {url} has SHA-256 {digest[:16]}... instead of the pinned "
            f"{file.sha256[:16]}... (config/reference.yaml): rejected, not stored"
        )
    try:
        atomic_write(target, data)
    except OSError as error:
        raise ReferenceDataError(f"reference file {file.relative}: cannot write {target}: {error.strerror}") from None
    return target, "downloaded"


def verify_local(file: ReferenceFile, directory: Path) -> Path:
    path = directory / file.relative
    if not path.is_file():
        raise ReferenceDataError(
            f"reference file {file.relative} not found in reference_dir {directory} (a copy of {file.url})"
        )
    digest = sha256_hex(path.read_bytes())
    if digest != file.sha256:
        raise ReferenceDataError(
            f"reference file {path} has SHA-256 {digest[:16]}... instead of the pinned {file.sha256[:16]}... of "
            f"{file.url} (config/reference.yaml): rejected"
        )
    return path


def fetch(
    files: list[ReferenceFile], host: str, cache: Path, reference_dir: Path | None = None, mirror: str = ""
) -> dict[str, Any]:
    """The manifest: for every file its URL, pinned SHA-256, status (cached, downloaded, verified, failed) and the
    local path or the one-line reason it cannot be used."""
    entries: list[dict[str, Any]] = []
    unreachable: str | None = None
    for file in files:
        url = mirrored(file.url, host, mirror)
        entry: dict[str, Any] = {"file": file.relative, "url": url, "sha256": file.sha256}
        try:
            if reference_dir is not None:
                if not reference_dir.is_dir():
                    raise ReferenceDataError(f"reference_dir {reference_dir} does not exist (config/config.yaml)")
                path, status = verify_local(file, reference_dir), "verified"
            elif unreachable is not None:
                raise ReferenceDataError(unreachable)
            else:
                path, status = fetch_file(file, cache, url)
            entry.update(status=status, path=str(path))
        except _Unreachable as error:
            # The same line for every file not attempted, so the outputs list the reason once.
            host_name = urllib.parse.urlsplit(url).netloc
            unreachable = f"reference files not downloaded: {host_name} did not answer (for {file.relative})"
            entry.update(status="failed", error=str(error))
        except ReferenceDataError as error:
            entry.update(status="failed", error=str(error))
        entries.append(entry)
    return {
        "format": MANIFEST_FORMAT,
        "origin": "reference_dir" if reference_dir is not None else "download",
        "location": studylib.display_path(reference_dir if reference_dir is not None else cache),
        "files": entries,
    }


def failure_lines(manifest: dict[str, Any]) -> list[str]:
    """One line per distinct reason a file cannot be used."""
    return list(dict.fromkeys(e["error"] for e in manifest["files"] if e["status"] == "failed"))


# --------------------------------------------------------------------------------------------------- reading
@functools.cache
def _simbav2_rows(path: Path) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(env_name, metric) -> (seeds, env steps, values) of one SimbaV2 CSV, read once per process."""
    frame = pd.read_csv(path, index_col=0)
    return {
        (str(env), str(metric)): (rows["seed"].to_numpy(), rows["env_step"].to_numpy(), rows["value"].to_numpy())
        for (env, metric), rows in frame.groupby(["env_name", "metric"], sort=False)
    }


def on_grid(
    seeds: np.ndarray, steps: np.ndarray, values: np.ndarray, grid: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """(steps (T,), values (seeds, T)) from long (seed, step, value) rows; see the module docstring."""
    unique_steps = np.unique(steps)
    spacing = float(np.median(np.diff(unique_steps))) if len(unique_steps) > 1 else float(grid)
    if abs(spacing - grid) > 0.01 * grid:
        raise ReferenceDataError(
            f"{where}: evaluated every {spacing:,.0f} env steps, but config/reference.yaml declares grid {grid:,}"
        )
    seed_ids, row = np.unique(seeds, return_inverse=True)
    column_ids, column = np.unique(np.rint(np.asarray(steps) / grid).astype(np.int64), return_inverse=True)
    if len(np.unique(row * len(column_ids) + column)) != len(row):
        raise ReferenceDataError(f"{where}: a seed has two evaluations within one grid step ({grid:,})")
    table = np.full((len(seed_ids), len(column_ids)), np.nan)
    table[row, column] = values
    # A column's step is the most common actual step among its seeds (a tie goes to the smaller one).
    pairs, counts = np.unique(np.stack([column, np.asarray(steps, dtype=np.int64)]), axis=1, return_counts=True)
    order = np.lexsort((pairs[1], -counts, pairs[0]))
    step_of = pairs[1][order][np.unique(pairs[0][order], return_index=True)[1]]
    complete = ~np.isnan(table).any(axis=0)
    return step_of[complete], table[:, complete]


def load_curve(
    reference: dict[str, Any], source_name: str, task: str, paths: dict[str, Path]
) -> tuple[np.ndarray, np.ndarray]:
    """(env steps (T,), values (seeds, T)) of the source's curve for ``task``; ``paths`` maps each
    ReferenceFile.relative to its verified local file."""
    source = reference["sources"][source_name]
    entry = source["tasks"][task]
    grid = entry.get("grid", source["grid"])
    files = source_files(reference, source_name, task)
    where = f"reference {source_name} curve {entry['curve']!r} ({task})"
    if source["format"] == "dime-npy":
        steps, values = (np.load(paths[f.relative]) for f in files)
        seeds = np.repeat(np.arange(values.shape[0]), values.shape[1])
        return on_grid(seeds, steps.ravel(), values.ravel(), grid, where)
    metric = source["metric"][studylib.suite_of(task)]
    rows = _simbav2_rows(paths[files[0].relative]).get((entry["curve"], metric))
    if rows is None:
        raise ReferenceDataError(f"{where}: {files[0].name} has no {metric!r} rows for env_name {entry['curve']!r}")
    return on_grid(*rows, grid, where)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-config", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--cache", required=True, help="download cache, e.g. resources/reference")
    parser.add_argument("--out", required=True, help="the manifest (JSON) the reproduction check reads")
    parser.add_argument("--reference-dir", default="", help="read a local copy instead of downloading")
    parser.add_argument("--mirror", default="", help="base URL that replaces the host of every pinned URL")
    parser.add_argument("--required", action="store_true", help="exit 1 when a file cannot be used")
    args = parser.parse_args(argv)

    try:
        reference = load_reference_config(args.reference_config)
        study = studylib.load_study(args.study, check_registry=False)
        files = needed_files(study, reference)
    except StudyError as error:
        sys.exit(str(error))
    directory = Path(args.reference_dir) if args.reference_dir else None
    manifest = fetch(files, reference["host"], Path(args.cache), directory, args.mirror)
    atomic_write(Path(args.out), (json.dumps(manifest, indent=2) + "\n").encode())
    counts = pd.Series([e["status"] for e in manifest["files"]], dtype=object).value_counts()
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "none needed"
    print(f"reference files for the {study.name} study ({manifest['origin']}, {manifest['location']}): {summary}")
    failures = failure_lines(manifest)
    if failures and args.required:
        more = f" (and {len(failures) - 1} more in {args.out})" if len(failures) > 1 else ""
        sys.exit(f"reference_required: {failures[0]}{more}")
    for line in failures:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    main()
