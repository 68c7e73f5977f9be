# Aggregation: every run -> one long table (+ run status, provenance), per-experiment statistics with rliable,
# and the reproduction check against published curves (files from rule fetch_reference, workflow/rules/reference.smk).
# All local: they need seconds, not GPUs.
# Scripts are inputs, so editing one re-runs exactly the steps that use it.


localrules:
    runs_finished,
    collect,
    aggregate,
    reproduction,


# Every expected run has finished. The flag is git-ignored and a target of rule all: in a fresh clone the committed
# tables exist but the flag does not, so the study trains (Snakemake never produces the missing inputs of a job whose
# outputs exist, and a clone has no job records for the `input` rerun trigger); the newer flag then re-aggregates.
rule runs_finished:
    input:
        all_summaries,
    output:
        touch(RUNS_FINISHED),


rule collect:
    input:
        summaries=collected_summaries,
        runs_finished=runs_finished_flag,
        study=STUDY_FILE,
        normalisation=NORMALISATION_FILE,
        script=SCRIPTS / "collect.py",
        lib=SCRIPTS / "studylib.py",
    output:
        long=f"{OUT}/scores_long.csv",
        status=f"{OUT}/runs.csv",
        manifest=f"{OUT}/provenance.json",
    log:
        f"{OUT}/logs/collect.log",
    shell:
        "{PYTHON:q} {input.script:q} --study {input.study:q} --runs-dir {RUNS:q} "
        "--normalisation {input.normalisation:q} --long {output.long:q} --status {output.status:q} "
        "--manifest {output.manifest:q} > {log:q} 2>&1"


rule aggregate:
    input:
        long=rules.collect.output.long,
        status=rules.collect.output.status,
        study=STUDY_FILE,
        script=SCRIPTS / "aggregate.py",
        lib=SCRIPTS / "studylib.py",
    output:
        f"{OUT}/stats/{{experiment}}.json",
    log:
        f"{OUT}/logs/aggregate_{{experiment}}.log",
    shell:
        "{PYTHON:q} {input.script:q} --study {input.study:q} --experiment {wildcards.experiment} "
        "--long {input.long:q} --status {input.status:q} --out {output:q} > {log:q} 2>&1"


rule reproduction:
    input:
        long=rules.collect.output.long,
        study=STUDY_FILE,
        reference=REFERENCE_CONFIG,
        files=rules.fetch_reference.output,
        script=SCRIPTS / "reproduction.py",
        lib=[
            SCRIPTS / name
            for name in ("reference_data.py", "studylib.py", "aggregate.py", "make_plots.py", "make_tables.py")
        ],
    output:
        tables=multiext(f"{OUT}/tables/reproduction", ".md", ".tex", ".csv"),
        html=report(
            f"{OUT}/tables/reproduction.html",
            caption="../report/reproduction_table.rst",
            category="Reproduction check",
            labels={"table": "ours vs published curves"},
        ),
        summary=report(
            f"{OUT}/tables/reproduction_summary.csv",
            caption="../report/reproduction_summary.rst",
            category="Reproduction check",
            labels={"table": "verdicts"},
        ),
        summary_md=f"{OUT}/tables/reproduction_summary.md",
        steps=f"{OUT}/tables/reproduction_steps.csv",
        png=[
            report(
                f"{OUT}/plots/reproduction_{label}.png",
                caption="../report/reproduction_overlay.rst",
                category="Reproduction check",
                labels={"figure": f"overlay: {label}"},
            )
            for label in REPRODUCTION_LABELS
        ],
        pdf=[f"{OUT}/plots/reproduction_{label}.pdf" for label in REPRODUCTION_LABELS],
    log:
        f"{OUT}/logs/reproduction.log",
    shell:
        "{PYTHON:q} {input.script:q} --study {input.study:q} --long {input.long:q} "
        "--reference-config {input.reference:q} --reference-files {input.files:q} "
        "--tables {OUT}/tables --plots {OUT}/plots > {log:q} 2>&1"
