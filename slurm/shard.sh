#!/usr/bin/env bash
# slurm/shard.sh - write a corpus into WebDataset shards (python -m sharded_data.write) with a job
# array: N tasks (default 8, one node each) write the shards in parallel, one writer process per
# allocated CPU within a task; then slurm/shard_finalize.sh, once every task has succeeded, checks
# the shards and writes the indexes and corpus.json. Run from the repository root:
#
#   export PHOENIX=/data/PHOENIX-2014-T OUT=/data/shards/phoenix14t   # or CSL_DAILY=/MANIFEST=, EXTRA_ARGS=
#   jid=$(sbatch --parsable slurm/shard.sh)                           # tasks 0-7 (#SBATCH --array=0-7)
#   sbatch --dependency=afterok:$jid slurm/shard_finalize.sh          # once all of them have succeeded
#
#   jid=$(sbatch --parsable --array=0-31%8 slurm/shard.sh)            # 32 tasks, at most 8 at a time
#   NUM_TASKS=32 sbatch --array=5,17 slurm/shard.sh                   # re-run tasks 5 and 17 of 32
#   bash slurm/shard.sh                                               # outside SLURM: the whole write here
#
# Knobs (environment variables; all but NUM_TASKS are shard_finalize.sh's too: slurm/lib/shard_args.sh):
#   PHOENIX | CSL_DAILY | MANIFEST   the corpus (exactly one)                                [required]
#   OUT                              shard directory                                          [required]
#   VIDEO_FORMAT                     mp4 (default, compact) | npy (raw, fastest to read)
#   EXTRA_ARGS                       more flags for sharded_data.write (--resize H W, --skip-bad, ...)
#   NUM_TASKS                        size of the whole array (default: this array's size). Needed only to
#                                    re-run some tasks: task I of N writes the shards p with p % N == I
#   PYTHON                           interpreter (default .venv/bin/python if present, else python)
#   DRY_RUN=1                        print the writer's command line instead of running it
#
# Every task plans the same shards (sentence ids over all splits, from the sources) and writes only
# its own, so the tasks need no coordination; the result is byte for byte that of one process. A task
# is resumable (finished shards are skipped): before its time limit it requeues itself and continues.
# If a task fails, the finalize job is cancelled (--kill-on-invalid-dep): re-run the failed tasks
# (NUM_TASKS=N sbatch --parsable --array=I,J slurm/shard.sh) and submit the finalize job again after
# them. A finalize job that finds shards missing says which tasks should have written them.
#
#SBATCH --job-name=scl-shard
#SBATCH --array=0-7
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --output=slurm/logs/%x-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@60
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$PWD}"
source slurm/lib/shard_args.sh

task=()
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  # Task I of N writes plan positions p % N == I: N must be the size of the whole array 0..N-1, which a
  # re-run of some tasks (--array=5,17) is not.
  size=${SLURM_ARRAY_TASK_COUNT:-$(( ${SLURM_ARRAY_TASK_MAX:?} + 1 ))}
  if [ -z "${NUM_TASKS:-}" ]; then
    if [ "${SLURM_ARRAY_TASK_MIN:-0}" != 0 ] || [ "${SLURM_ARRAY_TASK_MAX:-$((size - 1))}" != $((size - 1)) ]; then
      echo "ERROR: this array (tasks ${SLURM_ARRAY_TASK_MIN:-?}..${SLURM_ARRAY_TASK_MAX:-?}, $size of them) is not" \
           "0..N-1. To re-run some tasks of an N-task array, give N: NUM_TASKS=N sbatch --array=... slurm/shard.sh" >&2
      exit 1
    fi
    NUM_TASKS=$size
  fi
  task=(--task-index "$SLURM_ARRAY_TASK_ID" --num-tasks "$NUM_TASKS")
fi
shard_writer_args --workers "${SLURM_CPUS_PER_TASK:-2}" "${task[@]}"
# decoding/encoding parallelism comes from the writer processes, not from threads inside each
export OMP_NUM_THREADS=1
if [ "${DRY_RUN:-0}" = 1 ]; then printf 'PROGRAM_ARGV:'; printf ' %q' "${WRITER_ARGS[@]}"; printf '\n'; exit 0; fi

# Near the time limit: requeue this task (SLURM_JOB_ID is the task's own id). The writer is killed with
# it; the requeued run skips the shards already finished (a half-written shard is a temporary file
# that the next run of the same task discards).
trap 'echo "[shard] time limit near: requeueing"; scontrol requeue "$SLURM_JOB_ID"' USR1
"$PYTHON" "${WRITER_ARGS[@]}" &
writer=$!
while kill -0 "$writer" 2>/dev/null; do wait "$writer" || true; done   # a trapped signal interrupts wait
wait "$writer"
