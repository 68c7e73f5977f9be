# Tables (Markdown, LaTeX, CSV) and plots (PNG, PDF) per experiment, an index README.md per study, and what
# `snakemake --report results/<study>/report.html` shows (the report(...) outputs with their captions).


localrules:
    tables,
    plots,
    index,


rule tables:
    input:
        stats=rules.aggregate.output,
        script=SCRIPTS / "make_tables.py",
    output:
        multiext(f"{OUT}/tables/{{experiment}}_aggregate", ".md", ".tex"),
        multiext(f"{OUT}/tables/{{experiment}}_per_task", ".md", ".tex"),
        multiext(f"{OUT}/tables/{{experiment}}_poi", ".md", ".tex"),
        report(
            f"{OUT}/tables/{{experiment}}_aggregate.csv",
            caption="../report/aggregate_table.rst",
            category="{experiment}",
            subcategory="Tables",
            labels={"experiment": "{experiment}", "table": "per-suite aggregate"},
        ),
        report(
            f"{OUT}/tables/{{experiment}}_per_task.csv",
            caption="../report/per_task_table.rst",
            category="{experiment}",
            subcategory="Tables",
            labels={"experiment": "{experiment}", "table": "per task"},
        ),
        report(
            f"{OUT}/tables/{{experiment}}_poi.csv",
            caption="../report/poi_table.rst",
            category="{experiment}",
            subcategory="Tables",
            labels={"experiment": "{experiment}", "table": "probability of improvement"},
        ),
    log:
        f"{OUT}/logs/tables_{{experiment}}.log",
    shell:
        "{PYTHON:q} {input.script:q} --stats {input.stats:q} --prefix {OUT}/tables/{wildcards.experiment} "
        "> {log:q} 2>&1"


rule plots:
    input:
        stats=rules.aggregate.output,
        script=SCRIPTS / "make_plots.py",
    output:
        interval_estimates=plot_output("interval_estimates", "interval estimates"),
        sample_efficiency=plot_output("sample_efficiency", "sample efficiency"),
        learning_curves=plot_output("learning_curves", "learning curves"),
        performance_profiles=plot_output("performance_profiles", "performance profiles"),
        poi=plot_output("poi", "probability of improvement"),
        pdfs=expand(f"{OUT}/plots/{{{{experiment}}}}_{{kind}}.pdf", kind=PLOT_KINDS),
    params:
        labels=STUDY.labels,
    log:
        f"{OUT}/logs/plots_{{experiment}}.log",
    shell:
        "{PYTHON:q} {input.script:q} --stats {input.stats:q} --prefix {OUT}/plots/{wildcards.experiment} "
        "--labels {params.labels} > {log:q} 2>&1"


rule index:
    input:
        outputs=[p for e in EXPERIMENTS for p in experiment_outputs(e)],
        reproduction=rules.reproduction.output.tables,
        manifest=rules.collect.output.manifest,
        study=STUDY_FILE,
        script=SCRIPTS / "write_index.py",
    output:
        f"{OUT}/README.md",
    log:
        f"{OUT}/logs/index.log",
    shell:
        "{PYTHON:q} {input.script:q} --study {input.study:q} --results {OUT:q} --manifest {input.manifest:q} "
        "--out {output:q} > {log:q} 2>&1"
