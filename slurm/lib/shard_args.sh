# shellcheck shell=bash
# slurm/lib/shard_args.sh - the sharded_data.write command that slurm/shard.sh (the array tasks) and
# slurm/shard_finalize.sh share (sourced, not run). The writer refuses a folder written with other
# settings, so both jobs must build the same flags from the same knobs: they are built here, once.
#
#   source slurm/lib/shard_args.sh
#   shard_writer_args [FLAG...]   # sets PYTHON and the array WRITER_ARGS (-m sharded_data.write ...)
#                                 # with FLAGs (the job's own) before EXTRA_ARGS: the user's flags win
#
# Knobs (environment; sbatch passes the submitting shell's environment to both jobs):
#   PHOENIX | CSL_DAILY | MANIFEST   the corpus (exactly one)                                [required]
#   OUT                              shard directory                                          [required]
#   VIDEO_FORMAT                     mp4 (default, compact) | npy (raw, fastest to read)
#   EXTRA_ARGS                       more flags for sharded_data.write (--resize H W, --skip-bad, ...)
#   PYTHON                           interpreter (default .venv/bin/python if present, else python)

shard_writer_args() {
  : "${OUT:?set OUT to the shard directory to write}"
  local sources=()
  [ -n "${PHOENIX:-}" ] && sources+=(--phoenix "$PHOENIX")
  [ -n "${CSL_DAILY:-}" ] && sources+=(--csl-daily "$CSL_DAILY")
  [ -n "${MANIFEST:-}" ] && sources+=(--manifest "$MANIFEST")
  [ ${#sources[@]} = 2 ] || { echo "ERROR: set exactly one of PHOENIX, CSL_DAILY, MANIFEST" >&2; return 1; }
  if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
  fi
  local extra=()
  read -r -a extra <<< "${EXTRA_ARGS:-}"      # split on spaces: flags and values without spaces
  WRITER_ARGS=(-m sharded_data.write "${sources[@]}" --out "$OUT" --video-format "${VIDEO_FORMAT:-mp4}"
               --no-progress "$@" "${extra[@]}")
}
