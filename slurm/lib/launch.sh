# shellcheck shell=bash
# slurm/lib/launch.sh - the launch path every sbatch script of the project shares (sourced, not run):
# one torchrun per node through srun, preemption signals forwarded to the training processes, and a
# requeue when the training checkpointed after such a signal.
#
#   source slurm/lib/launch.sh
#   launch_on_nodes -m recipe.pretrain --data DIR ...     # or: launch_on_nodes path/to/script.py ...
#   exit $?
#
# Knobs (environment):
#   PYTHON          interpreter (default .venv/bin/python when present, else python)
#   GPUS_PER_NODE   processes per node = GPUs per node (default: from the allocation, SLURM_GPUS_ON_NODE
#                   / SLURM_GPUS_PER_NODE; 0 when none)
#   CPUS_PER_NODE   CPUs the node's task (torchrun and its workers) may use (default: the allocation's,
#                   SLURM_CPUS_PER_TASK, else SLURM_CPUS_ON_NODE). srun is told explicitly: since Slurm 22.05
#                   a step does not inherit --cpus-per-task, and a task bound to one CPU starves every
#                   loader. Each rank sizes its loader workers from its share (recipe.build.loader_workers).
#   CPU=1           run on CPU even where GPUs exist: 1 process per node, gloo, CUDA hidden.
#                   GPUS_PER_NODE=0 (or no GPU in the allocation) means the same.
#   OMP_NUM_THREADS threads per process on CPU (default 1: emulated nodes share the real cores)
#   MAX_REQUEUES    give up requeueing after this many restarts (default 20): a run that keeps
#                   failing after each signal must not loop forever
#   DRY_RUN=1       print the command instead of running it (works outside SLURM; the tests use it)
#
# How a preemption flows (ENVIRONMENT.md has the verified SLURM facts behind each step):
#  1. `#SBATCH --signal=B:USR1@120` signals ONLY the batch shell 120 s before the time limit; a
#     preemption or `scancel` sends SIGTERM to every process of the job. `launch_on_nodes` traps both.
#  2. The trap forwards SIGUSR1 with `scancel --signal=USR1 $SLURM_JOB_ID`: without --batch/--full
#     that reaches every process of every srun step on every node (slurmstepd signals the whole
#     step, torchrun's workers included), but not the batch shell itself (no loop).
#  3. torchrun would die of SIGUSR1 (default action) or, told to handle it, stop its workers after
#     a grace period. So each node's task runs torchrun with SIGUSR1 *ignored* (`trap '' USR1` then
#     exec): the agent stays up, its workers inherit "ignored" and recipe/preemption.py installs its
#     own handler over it. SIGTERM keeps torchrun's default: it forwards SIGTERM to the workers,
#     which recipe/preemption.py also treats as "checkpoint and exit", and SIGKILLs them after 30 s.
#  4. The workers agree on a step, checkpoint and exit with code 3. torchrun reports that as a
#     failure (exit 1: its own status replaces the workers'), so the batch script decides from what
#     it saw: a signal arrived and the step did not succeed (or the step returned 3) -> requeue.
#  5. `scontrol requeue $SLURM_JOB_ID` puts the job back in the queue with the same id, command,
#     environment and log file (--open-mode=append); the training resumes from OUT's latest
#     checkpoint by itself.

REQUEUE_EXIT_CODE=3

# _in_repo_root: the job starts in a spool copy of the script; the code lives where sbatch was run
_in_repo_root() {
  cd "${SLURM_SUBMIT_DIR:-$PWD}" || return 1
  if [ ! -f slurm/lib/launch.sh ] || [ ! -d recipe ]; then
    echo "ERROR: run sbatch from the repository root (no slurm/lib/launch.sh or recipe/ in $PWD)" >&2
    return 1
  fi
}

# _gpus_per_node: GPUS_PER_NODE, else what SLURM allocated ("4" or "a100:4"), else 0
_gpus_per_node() {
  local g=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}}}
  g=${g##*:}
  [[ "$g" =~ ^[0-9]+$ ]] || { echo "ERROR: cannot read a GPU count from '$g' (set GPUS_PER_NODE)" >&2; return 1; }
  echo "$g"
}

# uses_gpus: 0 (true) when the job runs one process per GPU, 1 when it runs on CPU
uses_gpus() {
  local g
  g=$(_gpus_per_node) || return 1
  [ "${CPU:-0}" != 1 ] && [ "$g" != 0 ]
}

# _master_addr: the first host of the allocation runs torchrun's rendezvous store
_master_addr() {
  if [ -n "${SLURM_JOB_NODELIST:-}" ] && command -v scontrol >/dev/null; then
    scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1
  else
    echo 127.0.0.1
  fi
}

_forward_preemption() {
  local sig=$1
  PREEMPTED_BY=$sig
  echo "[launch $(date +%H:%M:%S)] got SIG$sig: asking the training processes to checkpoint (SIGUSR1)" >&2
  if [ -n "${SRUN_PID:-}" ] && ! scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null; then
    # scancel failed (controller busy?): srun forwards the signals it receives to its tasks
    kill -USR1 "$SRUN_PID" 2>/dev/null || true
  fi
}

# launch_on_nodes PROGRAM [ARGS...] - run `torchrun ... PROGRAM ARGS` once per node of the allocation.
# Returns 0 on success or after a requeue, else the step's exit status.
launch_on_nodes() {
  _in_repo_root || return 1
  local python=${PYTHON:-}
  if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python; fi
  fi
  local gpus nproc nnodes master_addr master_port
  gpus=$(_gpus_per_node) || return 1
  nnodes=${SLURM_JOB_NUM_NODES:-1}
  if ! uses_gpus; then
    # CPU: one process per node (gloo is chosen by recipe/dist.py when torch sees no GPU)
    nproc=1
    export CUDA_VISIBLE_DEVICES=""
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  else
    nproc=$gpus
  fi
  # CPUs for the node's task: every rank's loader workers run inside it
  local cpus=${CPUS_PER_NODE:-${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-}}}
  local resources=()
  [ -n "$cpus" ] && resources+=(--cpus-per-task="$cpus")
  # All of the node's allocated GPUs to its one task (torchrun). GPUS_PER_NODE without GPUs in the allocation
  # (a CPU cluster emulating the multi-GPU layout) asks srun for none: it would refuse the step ("Invalid gres").
  local allocated=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}}
  allocated=${allocated##*:}
  if uses_gpus && [[ "$allocated" =~ ^[1-9][0-9]*$ ]]; then resources+=(--gpus-per-node="$allocated"); fi
  master_addr=$(_master_addr)
  # Same rule as recipe/dist.py: below Linux's ephemeral range; every node derives the same port.
  master_port=$((20000 + ${SLURM_JOB_ID:-0} % 10000))

  local torchrun=(--nnodes="$nnodes" --nproc_per_node="$nproc"
                  --master_addr="$master_addr" --master_port="$master_port")
  # --node_rank is per node: $SLURM_NODEID is expanded inside each srun task, not here.
  # shellcheck disable=SC2016
  local per_node='trap "" USR1; py=$1; shift; exec "$py" -m torch.distributed.run --node_rank="$SLURM_NODEID" "$@"'
  # --kill-on-bad-exit: a node that fails takes the others down at once instead of leaving them
  # blocked in a collective until the backend's timeout.
  local cmd=(srun --nodes="$nnodes" --ntasks-per-node=1 --ntasks="$nnodes" "${resources[@]}" --kill-on-bad-exit=1
             bash -c "$per_node" node-launcher "$python" "${torchrun[@]}" "$@")

  echo "[launch] job ${SLURM_JOB_ID:-none} restart ${SLURM_RESTART_COUNT:-0}: $nnodes node(s) x $nproc process(es)," \
       "${cpus:-?} CPUs per node, master $master_addr:$master_port, python $python" >&2
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf 'LAUNCH:'; printf ' %q' "${cmd[@]}"; printf '\n'
    printf 'PROGRAM_ARGV:'; printf ' %q' "$@"; printf '\n'
    return 0
  fi

  PREEMPTED_BY=""; SRUN_PID=""
  trap '_forward_preemption USR1' USR1
  trap '_forward_preemption TERM' TERM
  "${cmd[@]}" &
  SRUN_PID=$!
  # A trapped signal interrupts `wait` (status > 128) while srun still runs: wait again.
  # (`|| true`: the callers run under `set -e`.)
  while kill -0 "$SRUN_PID" 2>/dev/null; do wait "$SRUN_PID" || true; done
  local rc=0
  wait "$SRUN_PID" || rc=$?
  trap - USR1 TERM
  echo "[launch $(date +%H:%M:%S)] step exited with $rc${PREEMPTED_BY:+ after SIG$PREEMPTED_BY}" >&2

  if [ "$rc" = "$REQUEUE_EXIT_CODE" ] || { [ -n "$PREEMPTED_BY" ] && [ "$rc" != 0 ]; }; then
    local restarts=${SLURM_RESTART_COUNT:-0}
    if [ "$restarts" -ge "${MAX_REQUEUES:-20}" ]; then
      echo "[launch] not requeueing: already restarted $restarts times (MAX_REQUEUES=${MAX_REQUEUES:-20})" >&2
      return "$rc"
    fi
    echo "[launch] requeueing job $SLURM_JOB_ID (restart $((restarts + 1))); it resumes from the latest checkpoint" >&2
    scontrol requeue "$SLURM_JOB_ID" && return 0
    echo "[launch] ERROR: scontrol requeue failed; resubmit the same command to resume" >&2
  fi
  return "$rc"
}
