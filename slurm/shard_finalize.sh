#!/usr/bin/env bash
# slurm/shard_finalize.sh - the last step of a slurm/shard.sh job array: check that every planned shard
# is finished, then write index-<split>.json and corpus.json (python -m sharded_data.write --finalize).
# Submit it with the array's knobs (the same shell or the same exports), to start once every task of
# the array has succeeded:
#
#   export PHOENIX=/data/PHOENIX-2014-T OUT=/data/shards/phoenix14t
#   jid=$(sbatch --parsable slurm/shard.sh)
#   sbatch --dependency=afterok:$jid slurm/shard_finalize.sh
#
# Knobs: PHOENIX | CSL_DAILY | MANIFEST, OUT, VIDEO_FORMAT, EXTRA_ARGS, PYTHON, as for slurm/shard.sh
# (the writer refuses settings that differ from the tasks'); DRY_RUN=1 prints the command.
#
# If a task failed, SLURM cancels this job (--kill-on-invalid-dep) instead of leaving it pending
# forever. Run by hand too early, it exits 1 naming the tasks whose shards are missing. With
# --skip-bad it may rewrite the shards after a skipped video (a copy of their bytes): give it time.
#
#SBATCH --job-name=scl-shard-finalize
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=4:00:00
#SBATCH --output=slurm/logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --kill-on-invalid-dep=yes
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$PWD}"
source slurm/lib/shard_args.sh

shard_writer_args --finalize
if [ "${DRY_RUN:-0}" = 1 ]; then printf 'PROGRAM_ARGV:'; printf ' %q' "${WRITER_ARGS[@]}"; printf '\n'; exit 0; fi
exec "$PYTHON" "${WRITER_ARGS[@]}"
