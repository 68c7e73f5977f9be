# One training job per (label, task, seed): python -m dime.train, resumable.
#
# Only summary.json is declared: the trainer writes it last, atomically, so its existence means "finished".
# checkpoint.pt, eval.csv and the rest of the run directory stay undeclared, so Snakemake never deletes them when a
# job fails or is killed, and rerunning the workflow resumes from the checkpoint. The params are exactly what
# defines a run (algorithm, overrides, budget, eval cadence) and the rule has no input files, so editing code,
# scripts, the Snakefile or other study entries never marks a finished run as outdated; raising a run's budget does,
# and the trainer then continues from its checkpoint. The input function adds no file: it stops the workflow with
# one line when a run that still has to train cannot train where it is about to run (workflow/rules/common.smk).


# With `resources: runs_per_gpu: N` in the study, N runs share a GPU: locally gpu_launch.py hands out N slots per GPU;
# on a cluster N training jobs form one job group (common.smk), one allocation with one GPU.


rule train:
    input:
        train_checks,
    group:
        TRAIN_GROUP
    output:
        f"{RUNS}/{{label}}/{{task}}/seed{{seed}}/summary.json",
    log:
        f"{RUNS}/{{label}}/{{task}}/seed{{seed}}/train.log",
    params:
        algo=run_algo,
        steps=run_steps,
        eval_every=STUDY.data["eval_every"],
        overrides=run_overrides,
    threads: TRAIN_THREADS
    resources:
        gpu=train_gpus,
        gres=train_gres,
        local_gpus=train_local_gpus,
        runtime=run_runtime,
        mem_mb=run_mem_mb,
        slurm_partition=slurm_partition,
        slurm_account=slurm_account,
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
        "{PYTHON:q} {SCRIPTS}/gpu_launch.py --gpus {resources.local_gpus} --local-gpus {LOCAL_GPUS} "
        "--runs-per-gpu {RUNS_PER_GPU} "
        "--lock-dir .snakemake/gpu-slots -- "
        "{PYTHON:q} -m dime.train --algo {params.algo:q} --task {wildcards.task} --seed {wildcards.seed} "
        "--steps {params.steps} --eval-every {params.eval_every} --checkpoint-every {CHECKPOINT_EVERY} --threads {threads} --compile {COMPILE} "
        "--out $(dirname {output:q}) --quiet {params.overrides} >> {log:q} 2>&1"
