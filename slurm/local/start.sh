#!/usr/bin/env bash
# slurm/local/start.sh - install, configure and start a local SLURM cluster on this machine, so that
# the project's sbatch scripts (slurm/*.sh) can be run and tested without a real cluster.
#
# Target: Debian 12 (Slurm 22.05), run as root, no systemd, no munge: the daemons are plain root
# processes on 127.0.0.1 with auth/none. Idempotent: re-running it with the cluster up only checks
# that it is healthy; if the generated config changed, it restarts the daemons it started before.
#
#   eval "$(slurm/local/start.sh)"        # prints: export SLURM_CONF=...
#   sbatch slurm/pretrain.sh ...
#   slurm/local/stop.sh
#
# Env knobs (all optional):
#   SLURM_LOCAL_DIR        config/state/logs/pids (default ${TMPDIR:-/tmp}/scl-slt-slurm)
#   SLURM_LOCAL_NODES=N    N=1: one node 'localhost'. N>1: N slurmd daemons named n1..nN on 127.0.0.1
#                          (emulated multi-node; '127.0.0.1 n1 .. nN' is added to /etc/hosts so that
#                          MASTER_ADDR=n1 resolves). Default 1.
#   SLURM_LOCAL_CPUS=C     CPUs declared per node (default: the real count; more = oversubscribed)
#   SLURM_LOCAL_GPUS=G     declare G fake GPUs per node (gres/gpu backed by /dev/tty0..), so that
#                          '#SBATCH --gpus-per-node=G' is accepted; nothing runs on them
#   SLURM_LOCAL_CTLD_PORT  slurmctld port (default 6817); slurmd ports start at
#   SLURM_LOCAL_SLURMD_PORT (default 6818), one per emulated node
#   SLURM_LOCAL_TIMEOUT    seconds to wait for the nodes to become idle (default 60)
# Unlike the reference scripts this copy never touches /etc/slurm: every client finds the cluster
# through SLURM_CONF (jobs inherit it from sbatch's environment), so two clusters on different
# ports and dirs never fight over one global file.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/scl-slt-slurm}
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
NNODES=${SLURM_LOCAL_NODES:-1}
GPUS=${SLURM_LOCAL_GPUS:-0}
CONF=$DIR/etc/slurm.conf
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export SLURM_CONF=$CONF

log() { echo "[slurm/local/start $(date +%H:%M:%S)] $*" >&2; }
die() {
  log "ERROR: $*"
  for f in "$DIR"/log/slurmctld.log "$DIR"/log/slurmd*.log; do
    [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}
[ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root; apt-get installs them)"
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_NODES must be an integer >= 1, got '$NNODES'"
[[ "$GPUS" =~ ^[0-9]+$ ]] || die "SLURM_LOCAL_GPUS must be an integer >= 0, got '$GPUS'"

# pid_alive PIDFILE NAME -> 0 if the pid in PIDFILE is a live process called NAME
pid_alive() {
  local pf=$1 name=$2 pid
  [ -s "$pf" ] || return 1
  pid=$(cat "$pf" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
  # a killed daemon stays a zombie until PID 1 reaps it (~1-2 s in containers): that is not alive
  [ "$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
# daemons write their pid file a moment after forking
wait_pidfile() { for _ in $(seq 1 50); do pid_alive "$1" "$2" && return 0; sleep 0.1; done; return 1; }

# ---------------------------------------------------------------- 1. install (fresh CI machines)
need_pkgs=()
command -v slurmctld >/dev/null || need_pkgs+=(slurmctld)
command -v slurmd    >/dev/null || need_pkgs+=(slurmd)
command -v sbatch    >/dev/null || need_pkgs+=(slurm-client)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and no apt-get to install them"
  log "installing ${need_pkgs[*]}"
  # Keep the packages' maintainer scripts from starting munge/slurm services on install.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; added_policy=1
  fi
  t0=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  # one retry: a mirror hiccup on a fresh machine is common and costs only seconds
  apt-get update -qq || { sleep 5; apt-get update -qq; }
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null \
    || { sleep 5; apt-get update -qq; apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null; }
  [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "install done in $((SECONDS - t0))s"
fi
version=$(slurmctld -V | awk '{print $2}')
log "slurm $version"
# auth/none and cred/none were removed in Slurm 23.11: newer versions would need munge.
case "$version" in
  2[0-2].*|23.02.*) ;;
  *) die "slurm $version has no auth/none; this script supports Slurm <= 23.02 (Debian 12 ships 22.05)" ;;
esac

# ---------------------------------------------------------------- 2. configure
mkdir -p "$DIR"/{etc,state/ctld,run,log}
hw=$(slurmd -C | head -n1)          # the hardware as slurmd sees it
val() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
REAL_CPUS=$(val CPUs)
MEM=$(( $(val RealMemory) * 90 / 100 ))   # headroom: a node must never drain for "Low RealMemory"
CPUS=${SLURM_LOCAL_CPUS:-$REAL_CPUS}
EXTRA=""
if [ "$CPUS" = "$REAL_CPUS" ]; then
  TOPO="Boards=$(val Boards) SocketsPerBoard=$(val SocketsPerBoard) CoresPerSocket=$(val CoresPerSocket) ThreadsPerCore=$(val ThreadsPerCore)"
else
  TOPO="Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1"
fi
# resources the hardware does not have (more CPUs, fake GPUs) need config_overrides
if [ "$CPUS" != "$REAL_CPUS" ] || [ "$GPUS" != 0 ]; then EXTRA+="SlurmdParameters=config_overrides"$'\n'; fi

GRES_NODE=""; new_gres=""
if [ "$GPUS" != 0 ]; then
  [ -e "/dev/tty$((GPUS - 1))" ] || die "SLURM_LOCAL_GPUS=$GPUS needs /dev/tty0..$((GPUS - 1)) as stand-in device files"
  EXTRA+="GresTypes=gpu"$'\n'; GRES_NODE=" Gres=gpu:$GPUS"
  new_gres="Name=gpu File=/dev/tty[0-$((GPUS - 1))]"
fi

if [ "$NNODES" = 1 ]; then
  NODES=(localhost)
  # slurmd must be started with -N localhost: the machine's host name is not 'localhost'
  NODE_LINES="NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS $TOPO RealMemory=$MEM$GRES_NODE State=UNKNOWN"
  D_SPOOL="$DIR/state/d"; D_PID="$DIR/run/slurmd.pid"; D_LOG="$DIR/log/slurmd.log"
else
  NODES=(); NODE_LINES=""
  for i in $(seq 1 "$NNODES"); do
    NODES+=("n$i")
    NODE_LINES+="NodeName=n$i NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i - 1)) CPUs=$CPUS $TOPO RealMemory=$MEM$GRES_NODE State=UNKNOWN"$'\n'
  done
  # %n = node name: each emulated node gets its own spool dir, pid file and log
  D_SPOOL="$DIR/state/d-%n"; D_PID="$DIR/run/slurmd-%n.pid"; D_LOG="$DIR/log/slurmd-%n.log"
fi
NODELIST=$(IFS=,; echo "${NODES[*]}")

# Why these lines:
#  auth/none + cred/none: no munge daemon (Slurm <= 23.02); cred_expire=10 cuts the delay before a
#    requeued job may start again from 120 s to ~15 s (the preemption tests requeue jobs).
#  proctrack/linuxproc + task/none: no cgroups needed in a container; linuxproc still tracks every
#    descendant of a step, so `scancel --signal` reaches torchrun's worker processes.
#  MinJobAge=600: `scontrol show job` keeps finished jobs for 10 min (no accounting, no sacct).
#  sched_interval/bf_interval=5: a requeued job is scheduled again within seconds.
new_conf=$(cat <<EOF
# generated by slurm/local/start.sh - local cluster on 127.0.0.1
ClusterName=sclslt
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
AuthInfo=cred_expire=10
CredType=cred/none
MailProg=/bin/true
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$D_SPOOL
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$D_PID
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$D_LOG
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
ReturnToService=2
MinJobAge=600
KillWait=10
SchedulerParameters=sched_interval=5,bf_interval=5
${EXTRA}${NODE_LINES}
PartitionName=debug Nodes=$NODELIST Default=YES MaxTime=INFINITE State=UP
EOF
)

conf_changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" > "$CONF"; conf_changed=1; log "wrote $CONF"
fi
if [ -n "$new_gres" ]; then
  if [ "$(cat "$DIR/etc/gres.conf" 2>/dev/null)" != "$new_gres" ]; then printf '%s\n' "$new_gres" > "$DIR/etc/gres.conf"; conf_changed=1; fi
elif [ -e "$DIR/etc/gres.conf" ]; then rm -f "$DIR/etc/gres.conf"; conf_changed=1; fi

if [ "$NNODES" -gt 1 ]; then   # node names must resolve: MASTER_ADDR is the first host of the job
  missing=(); for n in "${NODES[@]}"; do getent hosts "$n" >/dev/null || missing+=("$n"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "127.0.0.1 ${missing[*]} # slurm/local/start.sh" >> /etc/hosts; log "added ${missing[*]} to /etc/hosts"
  fi
fi

# ---------------------------------------------------------------- 3. start
any_running=0
for pf in "$DIR"/run/slurmctld.pid "$DIR"/run/slurmd*.pid; do
  [ -e "$pf" ] || continue
  n=$(basename "$pf" .pid); n=${n%%-*}          # slurmd-n1.pid -> slurmd
  pid_alive "$pf" "$n" && any_running=1
done
if [ "$conf_changed" = 1 ] && [ "$any_running" = 1 ]; then
  log "config changed while daemons run: restarting them"
  SLURM_LOCAL_DIR=$DIR "$HERE/stop.sh"
fi

if pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
  log "slurmctld already running (pid $(cat "$DIR/run/slurmctld.pid"))"
else
  rm -f "$DIR/run/slurmctld.pid"
  slurmctld -f "$CONF" || die "slurmctld failed to start"
  wait_pidfile "$DIR/run/slurmctld.pid" slurmctld || die "slurmctld did not write a live pid file"
  log "slurmctld started (pid $(cat "$DIR/run/slurmctld.pid"))"
fi
# wait for the controller to answer before starting slurmd (avoids a failed first registration)
for _ in $(seq 1 $((TIMEOUT * 2))); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
scontrol ping | grep -q UP || die "slurmctld does not answer 'scontrol ping'"

for n in "${NODES[@]}"; do
  pf=${D_PID//%n/$n}
  mkdir -p "${D_SPOOL//%n/$n}"
  if pid_alive "$pf" slurmd; then
    log "slurmd $n already running (pid $(cat "$pf"))"
  else
    rm -f "$pf"
    slurmd -N "$n" -f "$CONF" || die "slurmd $n failed to start"
    wait_pidfile "$pf" slurmd || die "slurmd $n did not write a live pid file"
    log "slurmd $n started (pid $(cat "$pf"))"
  fi
done

# ---------------------------------------------------------------- 4. wait for idle nodes
deadline=$((SECONDS + TIMEOUT)); resumed=0
while :; do
  states=$(sinfo -h -N -n "$NODELIST" -o %T 2>/dev/null | sort -u | tr '\n' ' ' || true)
  bad=0; for s in $states; do case "$s" in idle|mixed|allocated) ;; *) bad=1 ;; esac; done
  [ -n "$states" ] && [ $bad = 0 ] && [ "$(sinfo -h -N -n "$NODELIST" -o %N | sort -u | wc -l)" = "$NNODES" ] && break
  # a node left 'down' by an earlier unclean stop comes back with RESUME
  if [[ "$states" =~ (down|drain|fail) ]] && [ "$resumed" = 0 ]; then
    log "node state '$states' -> RESUME"; scontrol update NodeName="$NODELIST" State=RESUME || true; resumed=1
  fi
  [ $SECONDS -lt $deadline ] || die "nodes not idle after ${TIMEOUT}s (states '$states'): $(scontrol show node | grep -i reason || true)"
  sleep 0.5
done
log "cluster up: $(sinfo -h -o '%P %a %D %T %N' | tr '\n' ';')"
echo "export SLURM_CONF=$CONF"
