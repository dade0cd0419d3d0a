#!/usr/bin/env bash
# slurm/export.sh - turn a finetuning run's ZeRO checkpoint into a Hugging Face model directory and
# check that the exported model translates. One process, CPU is enough: the conversion gathers the
# fp32 weights from the ZeRO shards and merges LoRA; it needs memory, not a GPU. Run from the repo root:
#
#   RUN=runs/scl-finetune-1235 sbatch slurm/export.sh
#   RUN=... CHECK_VIDEOS="/data/dev/clip1.mp4 /data/dev/clip2.mp4" sbatch slurm/export.sh
#
# Knobs (environment variables):
#   RUN           finetuning (or pretraining) run directory                                  [required]
#   HF_OUT        output directory (default RUN/hf); must be new, empty or a previous export: the
#                 converter refuses anything else (HF_OUT=$RUN would otherwise replace the run)
#   TAG           checkpoint tag to export (default: the run's latest)
#   CHECK_VIDEOS  space-separated videos (or frame folders) to translate with the exported model, as
#                 a smoke test of the export (default: none)
#   PYTHON        interpreter (default .venv/bin/python if present, else python)
#
#SBATCH --job-name=scl-export
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --time=01:00:00
#SBATCH --output=slurm/logs/%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$PWD}"
: "${RUN:?set RUN to the run directory to export}"
[ -d "$RUN" ] || { echo "ERROR: RUN=$RUN is not a directory" >&2; exit 1; }
HF_OUT=${HF_OUT:-$RUN/hf}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

convert=(-m recipe.convert_to_hf "$RUN" --out "$HF_OUT")
[ -n "${TAG:-}" ] && convert+=(--tag "$TAG")
read -r -a videos <<< "${CHECK_VIDEOS:-}"
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf 'PROGRAM_ARGV:'; printf ' %q' "${convert[@]}"; printf '\n'
  [ ${#videos[@]} -gt 0 ] && { printf 'PROGRAM_ARGV:'; printf ' %q' -m recipe.translate --model "$HF_OUT" "${videos[@]}"; printf '\n'; }
  exit 0
fi

echo "[export] $RUN -> $HF_OUT"
"$PYTHON" "${convert[@]}"
if [ ${#videos[@]} -gt 0 ]; then
  echo "[export] translating ${#videos[@]} video(s) with the exported model"
  "$PYTHON" -m recipe.translate --model "$HF_OUT" "${videos[@]}"
fi
