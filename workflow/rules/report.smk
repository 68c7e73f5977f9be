# Tables (Markdown, LaTeX, HTML, CSV) and plots (PNG, PDF) per experiment, an index README.md per study, its
# landing-page summary.html, and what `snakemake --report results/<study>/report.html` shows (the report(...) outputs
# with their captions; the HTML tables render inline, workflow/report/workflow.rst embeds summary.html).


localrules:
    tables,
    plots,
    index,


def table_output(kind, title):
    """An HTML table of one experiment, shown inline in the report with its caption (workflow/report/<kind>_table.rst);
    the CSV next to it has every number at full precision."""
    return report(
        f"{OUT}/tables/{{experiment}}_{kind}.html",
        caption=f"../report/{kind}_table.rst",
        category="{experiment}",
        subcategory="Tables",
        labels={"experiment": "{experiment}", "table": title},
    )


rule tables:
    input:
        stats=rules.aggregate.output,
        script=SCRIPTS / "make_tables.py",
    output:
        multiext(f"{OUT}/tables/{{experiment}}_aggregate", ".md", ".tex", ".csv"),
        multiext(f"{OUT}/tables/{{experiment}}_per_task", ".md", ".tex", ".csv"),
        multiext(f"{OUT}/tables/{{experiment}}_poi", ".md", ".tex", ".csv"),
        aggregate=table_output("aggregate", "per-suite aggregate and cost"),
        per_task=table_output("per_task", "per task"),
        poi=table_output("poi", "probability of improvement"),
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
        stats=expand(f"{OUT}/stats/{{experiment}}.json", experiment=EXPERIMENTS),
        reproduction=rules.reproduction.output,
        status=rules.collect.output.status,
        manifest=rules.collect.output.manifest,
        study=STUDY_FILE,
        script=SCRIPTS / "write_index.py",
        lib=[SCRIPTS / "make_tables.py", SCRIPTS / "aggregate.py"],
    output:
        readme=f"{OUT}/README.md",
        landing=report(
            f"{OUT}/summary.html",
            caption="../report/summary.rst",
            category="Summary",
            labels={"page": "aggregate tables, cost, reproduction verdicts"},
        ),
    log:
        f"{OUT}/logs/index.log",
    shell:
        "{PYTHON:q} {input.script:q} --study {input.study:q} --results {OUT:q} --manifest {input.manifest:q} "
        "--out {output.readme:q} --landing {output.landing:q} > {log:q} 2>&1"


# ---------------------------------------------------------------------------------------------- report
class _ResultsWithoutJobRecords(logging.Filter):
    """Snakemake warns once per output it has no job record for ("Missing metadata"): outputs this working directory
    did not produce, e.g. committed results in a fresh clone, or results copied from a cluster. The report still
    holds every table and plot (and provenance.json every run's provenance); one line says so instead of one per file."""

    seen = False

    def filter(self, record):
        if not str(record.msg).startswith("Missing metadata for file"):
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg = (
            f"Outputs of study {STUDY.name} were not produced in this working directory (Snakemake has no job records "
            f"for them, e.g. committed or copied results): the report shows them without job runtimes; the runs' "
            f"provenance is in {OUT}/provenance.json."
        )
        record.args = ()
        return True


if REPORT_ONLY:
    _missing = [path for path in all_targets() if not os.path.exists(path)]
    if _missing:
        _one_line_exit(
            f"cannot build the report of study {STUDY.name}: {len(_missing)} of its outputs are missing (e.g. "
            f"{_missing[0]}); run `snakemake --cores all --config study={config['study']}` first "
            "(with partial=true for a study whose runs are not all finished)"
        )
    logging.getLogger("snakemake.logging").addFilter(_ResultsWithoutJobRecords())
