#!/usr/bin/env bash
# slurm/shard.sh - write a corpus into WebDataset shards (python -m sharded_data.write) on one node,
# one writer process per allocated CPU. Run from the repository root:
#
#   PHOENIX=/data/PHOENIX-2014-T OUT=/data/shards/phoenix14t sbatch slurm/shard.sh
#   CSL_DAILY=/data/CSL-Daily OUT=/data/shards/csl-daily sbatch --cpus-per-task=64 slurm/shard.sh
#   MANIFEST=my_corpus.tsv OUT=/data/shards/mine EXTRA_ARGS="--resize 224 224 --skip-bad" sbatch slurm/shard.sh
#
# Knobs (environment variables):
#   PHOENIX | CSL_DAILY | MANIFEST   the corpus (exactly one)                                [required]
#   OUT                              shard directory                                          [required]
#   VIDEO_FORMAT                     mp4 (default, compact) | npy (raw, fastest to read)
#   EXTRA_ARGS                       more flags for sharded_data.write (--resize H W, --skip-bad, ...)
#   PYTHON                           interpreter (default .venv/bin/python if present, else python)
#
# Why one node and not a job array: sharded_data.write assigns sentence ids over all splits at
# once and keeps one settings file per output folder, so per-split array tasks would disagree on
# sentence ids; it has no flag to write a subset of shards. It is resumable instead (finished shards
# are skipped, the indexes are written last), which is what a time limit needs: before the limit
# this script requeues the job and the next run continues where this one stopped.
#
#SBATCH --job-name=scl-shard
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --output=slurm/logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@60
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$PWD}"
: "${OUT:?set OUT to the shard directory to write}"
sources=()
[ -n "${PHOENIX:-}" ] && sources+=(--phoenix "$PHOENIX")
[ -n "${CSL_DAILY:-}" ] && sources+=(--csl-daily "$CSL_DAILY")
[ -n "${MANIFEST:-}" ] && sources+=(--manifest "$MANIFEST")
[ ${#sources[@]} = 2 ] || { echo "ERROR: set exactly one of PHOENIX, CSL_DAILY, MANIFEST" >&2; exit 1; }
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
# decoding/encoding parallelism comes from the writer processes, not from threads inside each
export OMP_NUM_THREADS=1
read -r -a extra <<< "${EXTRA_ARGS:-}"
args=(-m sharded_data.write "${sources[@]}" --out "$OUT" --video-format "${VIDEO_FORMAT:-mp4}"
      --workers "${SLURM_CPUS_PER_TASK:-2}" --no-progress "${extra[@]}")
if [ "${DRY_RUN:-0}" = 1 ]; then printf 'PROGRAM_ARGV:'; printf ' %q' "${args[@]}"; printf '\n'; exit 0; fi

# Near the time limit: requeue. The writer is killed with the job; the requeued run skips the
# shards already finished (a half-written shard is a temporary file that the next run discards).
trap 'echo "[shard] time limit near: requeueing"; scontrol requeue "$SLURM_JOB_ID"' USR1
"$PYTHON" "${args[@]}" &
writer=$!
while kill -0 "$writer" 2>/dev/null; do wait "$writer" || true; done   # a trapped signal interrupts wait
wait "$writer"
