# Aggregation: every run -> one long table (+ run status, provenance), per-experiment statistics with rliable,
# and the reproduction check against the DIME authors' released curves. All local: they need seconds, not GPUs.
# The reproduction check echoes its log, so a missing reference directory is reported on the console too.
# Scripts are inputs, so editing one re-runs exactly the steps that use it.


localrules:
    collect,
    aggregate,
    reproduction,


rule collect:
    input:
        summaries=collected_summaries,
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
        reference=REPO / "config" / "reference.yaml",
        script=SCRIPTS / "reproduction.py",
        lib=[SCRIPTS / "aggregate.py", SCRIPTS / "make_plots.py", SCRIPTS / "make_tables.py"],
    output:
        tables=multiext(f"{OUT}/tables/reproduction", ".md", ".tex"),
        csv=report(
            f"{OUT}/tables/reproduction.csv",
            caption="../report/reproduction_table.rst",
            category="Reproduction check",
            labels={"table": "ours vs released curves"},
        ),
        png=report(
            f"{OUT}/plots/reproduction_overlay.png",
            caption="../report/reproduction_overlay.rst",
            category="Reproduction check",
            labels={"figure": "overlay"},
        ),
        pdf=f"{OUT}/plots/reproduction_overlay.pdf",
    params:
        reference_dir=config["reference_dir"],
        flags=("" if config["reference_verify"] else "--no-verify ")
        + ("--required" if config["reference_required"] else ""),
    log:
        f"{OUT}/logs/reproduction.log",
    shell:
        "{PYTHON:q} {input.script:q} --study {input.study:q} --long {input.long:q} "
        "--reference-config {input.reference:q} --reference-dir {params.reference_dir:q} {params.flags} "
        "--table {OUT}/tables/reproduction --plot {OUT}/plots/reproduction_overlay 2>&1 | tee {log:q} >&2"
