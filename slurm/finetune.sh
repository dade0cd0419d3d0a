#!/usr/bin/env bash
# slurm/finetune.sh - stage 2 of SCL-SLT (translation finetuning from a pretraining run) on N nodes x
# G GPUs. Same launch path, preemption handling and log folder as slurm/pretrain.sh; run from the
# repository root:
#
#   DATA=/data/phoenix14t-shards INIT=runs/scl-pretrain-1234 sbatch slurm/finetune.sh
#   DATA=... INIT=... CPU=1 PRESET=tiny sbatch --nodes=2 --gpus-per-node=0 slurm/finetune.sh
#
# Knobs (environment variables):
#   DATA                   shard directory                                                   [required]
#   INIT                   pretraining run to start from (its latest checkpoint); unset = from scratch
#   OUT                    run directory (default runs/<job name>-<job id>; kept across requeues)
#   PRESET                 tiny | base | large (default large; must match INIT's)
#   DS_CONFIG              DeepSpeed config (default ds_configs/zero2_bf16.json on GPUs, zero2.json on CPU)
#   EPOCHS | MAX_STEPS     training length (default: the recipe's --epochs)
#   NUM_BEAMS              beam size of the dev/test evaluation (default: the recipe's)
#   EXTRA_ARGS             more flags for recipe/finetune.py, e.g. "--lr 5e-5 --label-smoothing 0.2"
#   GPUS_PER_NODE, CPU, PYTHON, MAX_REQUEUES, DRY_RUN: as in slurm/pretrain.sh and slurm/lib/launch.sh
#
# Resources: whole nodes, as slurm/pretrain.sh explains (the loaders need the node's CPUs and memory).
#
#SBATCH --job-name=scl-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=12:00:00
#SBATCH --output=slurm/logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$PWD}"
source slurm/lib/launch.sh

: "${DATA:?set DATA to a shard directory (python -m sharded_data.write / sharded_data.synth)}"
[ -d "$DATA" ] || { echo "ERROR: DATA=$DATA is not a directory" >&2; exit 1; }
OUT=${OUT:-runs/${SLURM_JOB_NAME:-scl-finetune}-${SLURM_JOB_ID:-manual}}
PRESET=${PRESET:-large}
if uses_gpus; then DS_CONFIG=${DS_CONFIG:-ds_configs/zero2_bf16.json}; else DS_CONFIG=${DS_CONFIG:-ds_configs/zero2.json}; fi
[ -f "$DS_CONFIG" ] || { echo "ERROR: DS_CONFIG=$DS_CONFIG does not exist (see ds_configs/)" >&2; exit 1; }

args=(--deepspeed_config "$DS_CONFIG" --data "$DATA" --out "$OUT" --preset "$PRESET")
if [ -n "${INIT:-}" ]; then
  [ -d "$INIT" ] || { echo "ERROR: INIT=$INIT is not a run directory" >&2; exit 1; }
  args+=(--init "$INIT")
fi
[ -n "${EPOCHS:-}" ] && args+=(--epochs "$EPOCHS")
[ -n "${MAX_STEPS:-}" ] && args+=(--max-steps "$MAX_STEPS")
[ -n "${NUM_BEAMS:-}" ] && args+=(--num-beams "$NUM_BEAMS")
read -r -a extra <<< "${EXTRA_ARGS:-}"      # split on spaces: flags and values without spaces

launch_on_nodes -m recipe.finetune "${args[@]}" "${extra[@]}"
