# Published reference curves for the reproduction check (config/reference.yaml): which files the study needs, and
# the rule that downloads each of them once into resources/reference/ (git-ignored; or verifies a local copy given as
# reference_dir) and writes the manifest the reproduction rule reads. A file that cannot be had is reported in one line
# and in the reproduction tables; everything else is still produced (reference_required=true makes it an error).
import reference_data  # noqa: E402

REFERENCE_CONFIG = REPO / "config" / "reference.yaml"
# Relative to the working directory (the repository root), so the manifest holds no machine-specific prefix.
REFERENCE_CACHE = os.path.relpath(REPO / "resources" / "reference")

try:
    REFERENCE = reference_data.load_reference_config(REFERENCE_CONFIG)
    # The labels that get an overlay plot: checked, and running a task that their source has a curve for.
    REPRODUCTION_LABELS = reference_data.overlay_labels(STUDY, REFERENCE)
except studylib.StudyError as error:
    _one_line_exit(str(error))


def reproduction_outputs():
    kinds = (".md", ".tex", ".html", ".csv", "_summary.md", "_summary.csv")
    tables = [f"{OUT}/tables/reproduction{kind}" for kind in kinds]
    plots = [f"{OUT}/plots/reproduction_{label}.{ext}" for label in REPRODUCTION_LABELS for ext in ("png", "pdf")]
    return tables + [f"{OUT}/tables/reproduction_steps.csv"] + plots


localrules:
    fetch_reference,


rule fetch_reference:
    input:
        reference=REFERENCE_CONFIG,
        study=STUDY_FILE,
        script=SCRIPTS / "reference_data.py",
        lib=SCRIPTS / "studylib.py",
    output:
        f"{OUT}/reference_files.json",
    params:
        # Switching to a local copy or a mirror re-runs the fetch; it downloads only files not yet verified.
        reference_dir=config["reference_dir"],
        mirror=config["reference_mirror"],
        required="--required" if config["reference_required"] else "",
    log:
        f"{OUT}/logs/fetch_reference.log",
    shell:
        "{PYTHON:q} {input.script:q} --reference-config {input.reference:q} --study {input.study:q} "
        "--cache {REFERENCE_CACHE:q} --out {output:q} --reference-dir={params.reference_dir:q} "
        "--mirror={params.mirror:q} {params.required} 2>&1 | tee {log:q} >&2"
