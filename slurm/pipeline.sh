#!/usr/bin/env bash
# slurm/pipeline.sh - submit the whole SCL-SLT recipe as a chain of jobs, each starting only when the
# previous one succeeded (--dependency=afterok): reference run -> Pair Selection pretraining ->
# finetuning -> export. Runs on the login node (it only calls sbatch); run from the repository root:
#
#   DATA=/data/shards/phoenix14t slurm/pipeline.sh
#   DATA=... REFERENCE_RUN=runs/old-reference slurm/pipeline.sh        # reuse a reference run
#   DATA=... NEGATIVES=random slurm/pipeline.sh                         # baseline: no reference run
#   DATA=... CPU=1 PRESET=tiny SBATCH_GPUS_PER_NODE=0 slurm/pipeline.sh # CPU-only cluster
#
# Knobs (environment variables):
#   DATA                        shard directory                                                [required]
#   RUNS                        parent of the run directories (default runs/pipeline-<date-time>):
#                               RUNS/reference, RUNS/pretrain, RUNS/finetune, RUNS/finetune/hf
#   NEGATIVES                   ps (default) | random; ps without REFERENCE_RUN adds a reference run
#   REFERENCE_RUN               an existing reference run (skips that stage)
#   RECORD_TRAJECTORY_EVERY     k of the reference run (default 5, the paper's best)
#   REFERENCE_EXTRA_ARGS, PRETRAIN_EXTRA_ARGS, FINETUNE_EXTRA_ARGS
#                               EXTRA_ARGS of each stage (e.g. "--epochs 80"); the stages' flags differ,
#                               so one EXTRA_ARGS for all would not do
#   CHECK_VIDEOS                passed to slurm/export.sh
#   PRESET, DS_CONFIG, CURRICULUM, CPU, GPUS_PER_NODE, PYTHON: passed to every stage (see pretrain.sh)
#   SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_GPUS_PER_NODE, ...: sbatch's own variables, applied
#                               to every job (they override the scripts' #SBATCH lines)
#   DRY_RUN=1                   print the sbatch commands instead of submitting them
set -euo pipefail

# relative paths (DATA, RUNS, the scripts) are taken from here, and so is every job's submit dir
[ -f slurm/lib/launch.sh ] || { echo "ERROR: run slurm/pipeline.sh from the repository root" >&2; exit 1; }
: "${DATA:?set DATA to a shard directory}"
RUNS=${RUNS:-runs/pipeline-$(date +%Y%m%d-%H%M%S)}
NEGATIVES=${NEGATIVES:-ps}
# EPOCHS/MAX_STEPS/EXTRA_ARGS/OUT/INIT of the calling shell would reach every stage: each stage
# gets its own values below instead.
unset EPOCHS MAX_STEPS EXTRA_ARGS OUT INIT RUN

# submit VAR=value... -- SBATCH_ARGS... : print the job id (DRY_RUN: a placeholder named after OUT/RUN)
submit() {
  local assignments=()
  while [ "$1" != -- ]; do assignments+=("$1"); shift; done
  shift
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf 'SUBMIT:' >&2; printf ' %q' "${assignments[@]}" sbatch "$@" >&2; printf '\n' >&2
    echo "<${assignments[0]#*=}>"
  else
    env "${assignments[@]}" sbatch --parsable "$@" | cut -d';' -f1
  fi
}

after=()
if [ "$NEGATIVES" = ps ] && [ -z "${REFERENCE_RUN:-}" ]; then
  REFERENCE_RUN=$RUNS/reference
  ref=$(submit OUT="$REFERENCE_RUN" NEGATIVES=random RECORD_TRAJECTORY_EVERY="${RECORD_TRAJECTORY_EVERY:-5}" \
               EXTRA_ARGS="${REFERENCE_EXTRA_ARGS:-}" -- --job-name=scl-reference slurm/pretrain.sh)
  echo "reference run:  job $ref -> $REFERENCE_RUN"
  after=(--dependency="afterok:$ref")
fi
if [ "$NEGATIVES" = ps ]; then
  pre=$(submit OUT="$RUNS/pretrain" NEGATIVES=ps REFERENCE_RUN="$REFERENCE_RUN" RECORD_TRAJECTORY_EVERY= \
               EXTRA_ARGS="${PRETRAIN_EXTRA_ARGS:-}" -- "${after[@]}" slurm/pretrain.sh)
else
  pre=$(submit OUT="$RUNS/pretrain" NEGATIVES=random REFERENCE_RUN= RECORD_TRAJECTORY_EVERY= \
               EXTRA_ARGS="${PRETRAIN_EXTRA_ARGS:-}" -- slurm/pretrain.sh)
fi
echo "pretraining:    job $pre -> $RUNS/pretrain"
fin=$(submit OUT="$RUNS/finetune" INIT="$RUNS/pretrain" EXTRA_ARGS="${FINETUNE_EXTRA_ARGS:-}" \
             -- --dependency="afterok:$pre" slurm/finetune.sh)
echo "finetuning:     job $fin -> $RUNS/finetune"
exp=$(submit RUN="$RUNS/finetune" HF_OUT="$RUNS/finetune/hf" -- --dependency="afterok:$fin" slurm/export.sh)
echo "export:         job $exp -> $RUNS/finetune/hf"
echo "follow with: squeue -u \"\$USER\"; logs in slurm/logs/"
