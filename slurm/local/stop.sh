#!/usr/bin/env bash
# slurm/local/stop.sh - cancel the jobs of the local cluster started by slurm/local/start.sh and stop
# its daemons. Ends only the daemons recorded in our pid files, by PID, and only if that PID is still
# a process of the expected name (a recycled PID is left alone). Idempotent: exit 0 when nothing runs.
#   SLURM_LOCAL_DIR   the same dir start.sh used (default ${TMPDIR:-/tmp}/scl-slt-slurm)
set -uo pipefail
DIR=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/scl-slt-slurm}
export SLURM_CONF=$DIR/etc/slurm.conf
log() { echo "[slurm/local/stop $(date +%H:%M:%S)] $*" >&2; }

is_live() {  # not gone and not a zombie (PID 1 in a container reaps zombies only after ~1-2 s)
  local st; st=$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
pid_of() {  # pid_of PIDFILE NAME -> prints the pid if it is alive and called NAME
  local pf=$1 name=$2 pid
  [ -s "$pf" ] || return 1
  pid=$(cat "$pf" 2>/dev/null); [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
  is_live "$pid" && echo "$pid"
}

# 1. cancel our cluster's jobs first, so that slurmd reaps their processes (no orphans left behind)
if pid_of "$DIR/run/slurmctld.pid" slurmctld >/dev/null && [ -f "$SLURM_CONF" ]; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086  # one argument per job id
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 40); do [ -z "$(squeue -h -t R,CG -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi

# 2. stop the daemons by PID: slurmd(s) first, then slurmctld
for pf in "$DIR"/run/slurmd*.pid "$DIR"/run/slurmctld.pid; do
  [ -e "$pf" ] || continue
  d=$(basename "$pf" .pid); d=${d%%-*}          # slurmd-n1.pid -> slurmd
  if pid=$(pid_of "$pf" "$d"); then
    log "stopping $d (pid $pid)"; kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do is_live "$pid" || break; sleep 0.25; done
    if is_live "$pid"; then log "$d pid $pid still alive after 10s -> SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$pf"
done
log "stopped"
