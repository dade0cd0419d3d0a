#!/usr/bin/env bash
# slurm/pretrain.sh - stage 1 of SCL-SLT (contrastive + translation pretraining) on N nodes x G GPUs.
# Run from the repository root (logs go to slurm/logs/, a folder kept in git: sbatch opens the log
# before the script runs, and a missing folder would fail the job silently):
#
#   DATA=/data/phoenix14t-shards sbatch slurm/pretrain.sh                  # 2 nodes x 8 GPUs (below)
#   DATA=... sbatch --nodes=4 --gpus-per-node=4 slurm/pretrain.sh          # sbatch flags override #SBATCH
#   DATA=... NEGATIVES=random RECORD_TRAJECTORY_EVERY=5 sbatch slurm/pretrain.sh   # the reference run
#   DATA=... REFERENCE_RUN=runs/scl-pretrain-1234 sbatch slurm/pretrain.sh          # Pair Selection
#   DATA=... CPU=1 PRESET=tiny sbatch --nodes=2 --gpus-per-node=0 slurm/pretrain.sh  # CPU-only cluster
#   slurm/pipeline.sh chains reference run -> pretraining -> finetuning -> export.
#
# Knobs (environment variables; sbatch passes the submitting shell's environment to the job):
#   DATA                     shard directory (sharded_data.write / sharded_data.synth)       [required]
#   OUT                      run directory (default runs/<job name>-<job id>; a requeued job keeps its
#                            id, so it finds its own checkpoints and resumes)
#   PRESET                   tiny | base | large (default large)
#   DS_CONFIG                DeepSpeed config (default ds_configs/zero2_bf16.json on GPUs,
#                            ds_configs/zero2.json on CPU)
#   NEGATIVES                random | ps (default: ps when REFERENCE_RUN is set, else random)
#   CURRICULUM               Pair Selection schedule: log | linear | sqrt | easy | hard (default log)
#   REFERENCE_RUN            run made with RECORD_TRAJECTORY_EVERY=k; its trajectories drive ps. Or `self`:
#                            one run instead of two (random negatives while it records its own trajectory,
#                            RECORD_TRAJECTORY_EVERY=k and SELF_REFERENCE_CHECKPOINTS=K, then Pair Selection)
#   RECORD_TRAJECTORY_EVERY  k: embed the training set after epoch 1, then every k epochs (the reference run;
#                            paper: 5; Pair Selection needs >= 3 such checkpoints)
#   SELF_REFERENCE_CHECKPOINTS  K for REFERENCE_RUN=self (default the recipe's, 3)
#   EPOCHS | MAX_STEPS       training length (default: the recipe's --epochs)
#   EXTRA_ARGS               more flags for recipe/pretrain.py, e.g. "--micro-batch-size 16 --lr 2e-4"
#   NODES / GPUS_PER_NODE    come from the allocation (#SBATCH --nodes/--gpus-per-node or sbatch flags);
#                            GPUS_PER_NODE=0 or CPU=1: one process per node, gloo, OMP_NUM_THREADS=1
#   PYTHON                   interpreter (default .venv/bin/python if present, else python)
#   MAX_REQUEUES, DRY_RUN    see slurm/lib/launch.sh
#
# Resources: whole nodes (--exclusive, --mem=0 = all of a node's memory): the node's CPUs decode video for
# its GPUs (one loader per GPU, workers sized from the CPUs each rank gets; keeping one GPU busy takes more
# cores than most nodes have per GPU, benchmarks/results/data.md "Feeding a GPU"), and the pinned batches and
# DataLoader shared memory need the RAM.
#
# Preemption: 120 s before the time limit SLURM signals this script (USR1), which forwards the
# signal to the training processes; they checkpoint and exit with code 3, and the job requeues
# itself and resumes from OUT's latest checkpoint (details in slurm/lib/launch.sh).
#
#SBATCH --job-name=scl-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --output=slurm/logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$PWD}"
source slurm/lib/launch.sh

: "${DATA:?set DATA to a shard directory (python -m sharded_data.write / sharded_data.synth)}"
[ -d "$DATA" ] || { echo "ERROR: DATA=$DATA is not a directory" >&2; exit 1; }
OUT=${OUT:-runs/${SLURM_JOB_NAME:-scl-pretrain}-${SLURM_JOB_ID:-manual}}
PRESET=${PRESET:-large}
if uses_gpus; then DS_CONFIG=${DS_CONFIG:-ds_configs/zero2_bf16.json}; else DS_CONFIG=${DS_CONFIG:-ds_configs/zero2.json}; fi
[ -f "$DS_CONFIG" ] || { echo "ERROR: DS_CONFIG=$DS_CONFIG does not exist (see ds_configs/)" >&2; exit 1; }
if [ -n "${REFERENCE_RUN:-}" ]; then NEGATIVES=${NEGATIVES:-ps}; else NEGATIVES=${NEGATIVES:-random}; fi

args=(--deepspeed_config "$DS_CONFIG" --data "$DATA" --out "$OUT" --preset "$PRESET" --negatives "$NEGATIVES")
if [ "$NEGATIVES" = ps ]; then
  [ "${REFERENCE_RUN:-}" = self ] || [ -d "${REFERENCE_RUN:-}" ] || { echo "ERROR: NEGATIVES=ps needs REFERENCE_RUN=<a run made with RECORD_TRAJECTORY_EVERY=k> or REFERENCE_RUN=self" >&2; exit 1; }
  args+=(--reference-run "$REFERENCE_RUN" --curriculum "${CURRICULUM:-log}")
fi
[ -n "${RECORD_TRAJECTORY_EVERY:-}" ] && args+=(--record-trajectory-every "$RECORD_TRAJECTORY_EVERY")
[ -n "${SELF_REFERENCE_CHECKPOINTS:-}" ] && args+=(--self-reference-checkpoints "$SELF_REFERENCE_CHECKPOINTS")
[ -n "${EPOCHS:-}" ] && args+=(--epochs "$EPOCHS")
[ -n "${MAX_STEPS:-}" ] && args+=(--max-steps "$MAX_STEPS")
read -r -a extra <<< "${EXTRA_ARGS:-}"      # split on spaces: flags and values without spaces

launch_on_nodes -m recipe.pretrain "${args[@]}" "${extra[@]}"
