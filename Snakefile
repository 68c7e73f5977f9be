# The DIME reproducibility study.
#
#   snakemake --cores all                        # the default study (config/config.yaml: study: quick)
#   snakemake --cores all --profile slurm        # the paper's study on a SLURM GPU cluster (the profile sets it)
#   snakemake --report results/quick/report.html                  # HTML report with captions
#
# Rules live in workflow/rules/, scripts in workflow/scripts/, studies in config/studies/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/reference.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
