#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests and CI.
#
#   scripts/slurm-cluster.sh up       install (if needed) and start; prints `export SLURM_CONF=...`
#   scripts/slurm-cluster.sh down     stop exactly the daemons `up` started
#   scripts/slurm-cluster.sh status   show daemons and nodes; exit 0 when up, 1 when down
#   scripts/slurm-cluster.sh env      print the `export SLURM_CONF=...` line
#
# Use it as:  eval "$(scripts/slurm-cluster.sh up)"
#
# Debian's slurmctld/slurmd/munge packages, daemons started directly (no
# systemd), proctrack/pgid and task/none (no cgroups), no slurmdbd, and
# two partitions: `cpu` (default) and `gpu` with fake GPUs (GRES backed by
# device nodes made with mknod). Config, state, spool, logs and pid files live
# in .slurm/ at the repo root (or $SLURM_CLUSTER_DIR); a munged of its own
# (key, socket) in /run/geopd-slurm/<hash of that directory>/; the ports are
# picked free at `up`: clusters of two checkouts on one machine share nothing
# and run side by side.
#
# Job steps find this cluster's config without SLURM_CONF (the executor's
# job-step plugin strips it before its inner `srun`; so does any client that
# cleans SLURM_* from its environment): slurmd runs in a private mount
# namespace where $ROOT/etc is bind-mounted on /etc/slurm, Slurm's default
# config directory, and every job inherits that view. Outside the jobs
# nothing changes; clients there use `export SLURM_CONF=...`.
#
# Exit codes: 0 ok; 3 the cluster cannot run here (not root and no sudo, no
# apt-get, packages or daemons fail, no mount namespace, a cluster directory
# too deep for unix sockets): the last stderr line says why, and tests skip
# with it (fail under GEOPD_REQUIRE_SLURM=1, as in CI); 1 anything else (e.g.
# the node never became idle).
#
# Environment: SLURM_CLUSTER_DIR, SLURM_CLUSTER_GPUS (2),
# SLURM_CLUSTER_CTLD_PORT, SLURM_CLUSTER_SLURMD_PORT (default: the first free
# pair from 6817/6818 upwards; set both to pin them),
# SLURM_CLUSTER_TIMEOUT (seconds to wait for an idle node, 60).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${SLURM_CLUSTER_DIR:-$REPO/.slurm}
TEMPLATES=$REPO/tests/slurm
CONF=$ROOT/etc/slurm.conf
STARTED=$ROOT/run/started.pids   # "name pid" for each daemon this script started
GPUS=${SLURM_CLUSTER_GPUS:-2}
TIMEOUT=${SLURM_CLUSTER_TIMEOUT:-60}
# This cluster's munged: key, socket, pid, log, seed. munged wants every directory above its
# socket open to all, which a checkout (or pytest's tmp dir) need not be, so it lives under
# /run, named after $ROOT.
MUNGE=/run/geopd-slurm/$(printf %s "$ROOT" | sha256sum | cut -c1-16)/munge
MUNGE_SOCKET=$MUNGE/munge.socket.2
# Slurm's default config directory (sysconfdir of Debian's build): where clients
# without SLURM_CONF look; inside slurmd's mount namespace it is $ROOT/etc.
DEFAULT_CONF_DIR=/etc/slurm
# Serialises port choice and daemon start between checkouts (two `up`s at once
# would otherwise both see the same ports free).
PORT_LOCK=${TMPDIR:-/tmp}/geopd-slurm-cluster.ports.lock
export PATH="$PATH:/usr/sbin:/sbin"

log() { echo "slurm-cluster: $*" >&2; }
cannot_run() { echo "slurm-cluster: cannot run a local Slurm cluster here: $*" >&2; exit 3; }
die() { echo "slurm-cluster: error: $*" >&2; exit 1; }

SUDO=()
need_root() {
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    cannot_run "not root and no passwordless sudo"
  fi
}
as_root() { "${SUDO[@]}" "$@"; }
slurm() { SLURM_CONF=$CONF "$@"; }

# A pid we recorded is only ours while it still runs the program we started
# (pids are recycled).
alive() {
  local name=$1 pid=$2 comm
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ $comm == "$name"* ]]
}

recorded_pid() {  # recorded_pid NAME -> pid or empty
  [ -f "$STARTED" ] || return 0
  awk -v n="$1" '$1 == n { p = $2 } END { if (p) print p }' "$STARTED"
}

record() { mkdir -p "$(dirname "$STARTED")"; echo "$1 $2" >>"$STARTED"; }

install_packages() {
  local missing=()
  for b in slurmctld slurmd munged munge sinfo sbatch srun squeue scontrol scancel; do
    command -v "$b" >/dev/null 2>&1 || missing+=("$b")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || cannot_run "missing ${missing[*]} and apt-get is unavailable"
  log "installing slurmctld slurmd munge slurm-client (missing: ${missing[*]})"
  mkdir -p "$ROOT/log"
  local aptlog=$ROOT/log/apt.log
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$aptlog" 2>&1; then
    cannot_run "apt-get update failed (see $aptlog)"
  fi
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      slurmctld slurmd munge slurm-client >>"$aptlog" 2>&1; then
    cannot_run "apt-get install of slurmctld slurmd munge slurm-client failed (see $aptlog)"
  fi
  for b in slurmctld slurmd munged sinfo srun; do
    command -v "$b" >/dev/null 2>&1 || cannot_run "$b still missing after apt-get install"
  done
}

munge_works() { munge -S "$MUNGE_SOCKET" -n </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

# This cluster's own munged (never the system's): its key and socket live in
# $MUNGE, and slurm.conf's AuthInfo points slurmctld, slurmd and the clients
# at that socket.
start_munge() {
  if alive munged "$(recorded_pid munged)" && munge_works; then
    return 0
  fi
  getent passwd munge >/dev/null || cannot_run "no munge user (the munge package did not install it)"
  as_root mkdir -p "$MUNGE"
  as_root chmod 0755 "$(dirname "$MUNGE")" "$(dirname "$(dirname "$MUNGE")")"
  as_root chown munge:munge "$MUNGE"
  as_root chmod 0755 "$MUNGE"
  local key=$MUNGE/munge.key
  if ! as_root test -s "$key"; then
    as_root dd if=/dev/urandom of="$key" bs=1 count=1024 status=none || cannot_run "could not write $key"
  fi
  as_root chown munge:munge "$key" && as_root chmod 0400 "$key"
  as_root rm -f "$MUNGE/munged.pid"
  local args=(munged "--socket=$MUNGE_SOCKET" "--key-file=$key" "--pid-file=$MUNGE/munged.pid"
              "--log-file=$MUNGE/munged.log" "--seed-file=$MUNGE/munged.seed")
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u munge -- "${args[@]}" </dev/null >>"$ROOT/log/munged.out" 2>&1 \
      || cannot_run "munged failed to start: $(tail -1 "$ROOT/log/munged.out") (see $MUNGE/munged.log)"
  else
    sudo -n -u munge "${args[@]}" </dev/null >>"$ROOT/log/munged.out" 2>&1 \
      || cannot_run "munged failed to start: $(tail -1 "$ROOT/log/munged.out") (see $MUNGE/munged.log)"
  fi
  local pid
  for _ in $(seq 50); do
    munge_works && break
    sleep 0.1
  done
  munge_works || cannot_run "munged started but munge/unmunge fail on $MUNGE_SOCKET (see $MUNGE/munged.log)"
  pid=$(as_root cat "$MUNGE/munged.pid" 2>/dev/null || true)
  alive munged "$pid" || cannot_run "munged is not running after start (see $MUNGE/munged.log)"
  record munged "$pid"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

choose_ports() {  # sets CTLD_PORT and SLURMD_PORT
  if [ -n "${SLURM_CLUSTER_CTLD_PORT:-}" ] || [ -n "${SLURM_CLUSTER_SLURMD_PORT:-}" ]; then
    CTLD_PORT=${SLURM_CLUSTER_CTLD_PORT:?set SLURM_CLUSTER_SLURMD_PORT too}
    SLURMD_PORT=${SLURM_CLUSTER_SLURMD_PORT:?set SLURM_CLUSTER_CTLD_PORT too}
    for p in "$CTLD_PORT" "$SLURMD_PORT"; do
      port_busy "$p" && die "port $p (SLURM_CLUSTER_*_PORT) is in use"
    done
    return 0
  fi
  local p
  for ((p = 6817; p < 7017; p += 2)); do
    if ! port_busy "$p" && ! port_busy "$((p + 1))"; then
      CTLD_PORT=$p SLURMD_PORT=$((p + 1))
      return 0
    fi
  done
  die "no free port pair in 6817-7016 for slurmctld/slurmd; set SLURM_CLUSTER_CTLD_PORT and SLURM_CLUSTER_SLURMD_PORT"
}

render() {  # render TEMPLATE OUT
  sed -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" -e "s|@ADDR@|$ADDR|g" \
      -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
      -e "s|@ROOT@|$ROOT|g" -e "s|@CPUS@|$CPUS|g" -e "s|@BOARDS@|$BOARDS|g" \
      -e "s|@SOCKETS@|$SOCKETS|g" -e "s|@CORES@|$CORES|g" -e "s|@THREADS@|$THREADS|g" \
      -e "s|@MEM@|$MEM|g" -e "s|@GPUS@|$GPUS|g" -e "s|@GPU_LAST@|$((GPUS - 1))|g" \
      -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" \
      "$1" >"$2"
}

write_config() {
  HOST=$(hostname -s)
  [ -n "$HOST" ] || cannot_run "hostname -s is empty"
  ADDR=127.0.0.1
  CLUSTER=geopd
  # slurmd's own view of the hardware, so the node registers without a
  # "low RealMemory / CPU count" drain.
  local hw
  hw=$(slurmd -C 2>/dev/null | head -1) || true
  field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
  CPUS=$(field CPUs); BOARDS=$(field Boards); SOCKETS=$(field SocketsPerBoard)
  CORES=$(field CoresPerSocket); THREADS=$(field ThreadsPerCore); MEM=$(field RealMemory)
  if [ -z "$CPUS" ] || [ -z "$MEM" ]; then
    CPUS=$(nproc); BOARDS=1; SOCKETS=1; CORES=$CPUS; THREADS=1
    MEM=$(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo)
  fi
  mkdir -p "$ROOT"/{etc,state/ctld,state/slurmd,run,log,dev}
  render "$TEMPLATES/slurm.conf.in" "$CONF"
  render "$TEMPLATES/gres.conf.in" "$ROOT/etc/gres.conf"
  if [ -f "$TEMPLATES/cgroup.conf" ]; then cp "$TEMPLATES/cgroup.conf" "$ROOT/etc/cgroup.conf"; fi
  local i
  for ((i = 0; i < GPUS; i++)); do
    [ -c "$ROOT/dev/nvidia$i" ] && continue
    rm -f "$ROOT/dev/nvidia$i"
    as_root mknod -m 0666 "$ROOT/dev/nvidia$i" c 195 "$i" \
      || cannot_run "mknod of fake GPU device $ROOT/dev/nvidia$i failed"
  done
}

last_error() {  # last error line of a daemon log, for one-line messages
  grep -E "error|fatal" "$1" 2>/dev/null | tail -1 | cut -c1-200 || true
}

start_daemon() {  # start_daemon NAME PIDFILE [WRAPPER...] -- ARGS...
  local name=$1 pidfile=$2 pid="" wrap=()
  shift 2
  while [ "$1" != "--" ]; do wrap+=("$1"); shift; done
  shift
  rm -f "$pidfile"
  # 9<&-: the daemon must not inherit (and so hold) the port lock.
  as_root env SLURM_CONF="$CONF" "${wrap[@]}" "$name" "$@" 9<&- </dev/null >>"$ROOT/log/$name.out" 2>&1 \
    || cannot_run "$name failed to start: $(last_error "$ROOT/log/$name.log") (see $ROOT/log/$name.log)"
  for _ in $(seq 100); do
    pid=$(cat "$pidfile" 2>/dev/null || true)
    alive "$name" "$pid" && break
    sleep 0.1
  done
  alive "$name" "$pid" \
    || cannot_run "$name exited after start: $(last_error "$ROOT/log/$name.log") (see $ROOT/log/$name.log)"
  record "$name" "$pid"
}

wait_idle() {
  local state="" deadline=$((SECONDS + TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    for name in slurmctld slurmd; do
      alive "$name" "$(recorded_pid "$name")" \
        || cannot_run "$name died: $(last_error "$ROOT/log/$name.log") (see $ROOT/log/$name.log)"
    done
    state=$(slurm sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)
    case $state in
      idle | mixed | allocated) return 0 ;;
    esac
    sleep 0.5
  done
  die "node $HOST not idle after ${TIMEOUT}s (state '${state:-none}'; $(slurm sinfo -h -R 2>/dev/null | head -1)); see $ROOT/log/"
}

print_env() { echo "export SLURM_CONF=$CONF"; }

# slurmd, and so every job step, sees $ROOT/etc as /etc/slurm (see the header).
private_conf_view() {
  as_root test -d "$DEFAULT_CONF_DIR" || as_root mkdir -p "$DEFAULT_CONF_DIR"
  mkdir -p "$ROOT/etc"
  NS_WRAP=(unshare --mount --propagation private sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
           sh "$ROOT/etc" "$DEFAULT_CONF_DIR")
  as_root "${NS_WRAP[@]}" true 2>/dev/null \
    || cannot_run "no private mount namespace with $ROOT/etc on $DEFAULT_CONF_DIR (unshare --mount failed): job steps could not find this cluster's config"
}

# slurmstepd listens on <spool>/<host>_<job>.<step>, a unix socket: 107 bytes at most.
check_socket_paths() {
  local longest=$ROOT/state/slurmd/${HOST}_4294967294.4294967294
  [ ${#longest} -le 107 ] \
    || cannot_run "$ROOT is too deep for slurmstepd's unix sockets; set SLURM_CLUSTER_DIR to a shorter path"
}

cmd_up() {
  [[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "SLURM_CLUSTER_GPUS must be a positive integer, got '$GPUS'"
  need_root
  install_packages
  HOST=$(hostname -s)
  check_socket_paths
  local ctld_pid slurmd_pid
  ctld_pid=$(recorded_pid slurmctld); slurmd_pid=$(recorded_pid slurmd)
  if alive slurmctld "$ctld_pid" && alive slurmd "$slurmd_pid" && alive munged "$(recorded_pid munged)" \
      && [ -f "$CONF" ]; then
    log "already up (slurmctld $ctld_pid, slurmd $slurmd_pid, ports $(conf_ports))"
    wait_idle
    print_env
    return 0
  fi
  # A half-up cluster (one daemon died): restart from a clean slate.
  if [ -f "$STARTED" ]; then
    stop_started
  fi
  # A failed start leaves nothing running behind it.
  trap 'rc=$?; if [ $rc -ne 0 ]; then stop_started; fi; exit $rc' EXIT
  mkdir -p "$ROOT/log" "$ROOT/run"
  private_conf_view
  start_munge
  # Held until both daemons listen, so another checkout's `up` picks other ports.
  [ -e "$PORT_LOCK" ] || { : >>"$PORT_LOCK" && chmod 0666 "$PORT_LOCK"; } 2>/dev/null || true
  exec 9<"$PORT_LOCK" || die "cannot open $PORT_LOCK"
  flock -w 300 9 || die "another slurm-cluster.sh held $PORT_LOCK for 300 s"
  choose_ports
  write_config
  # -c: start without the previous run's jobs, so a test never inherits a
  # half-finished job from a cluster that was killed.
  start_daemon slurmctld "$ROOT/run/slurmctld.pid" -- -c -i
  for _ in $(seq 100); do
    slurm scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.1
  done
  as_root rm -rf "${ROOT:?}/state/slurmd"
  mkdir -p "$ROOT/state/slurmd"
  start_daemon slurmd "$ROOT/run/slurmd.pid" "${NS_WRAP[@]}" -- -N "$HOST"
  for _ in $(seq 100); do
    port_busy "$SLURMD_PORT" && break
    sleep 0.1
  done
  exec 9<&-
  wait_idle
  log "up: node $HOST idle; ports $CTLD_PORT/$SLURMD_PORT; partitions: $(slurm sinfo -h -o '%P' | tr '\n' ' ')"
  print_env
}

conf_ports() { sed -n 's/^Slurm\(ctld\|d\)Port=//p' "$CONF" 2>/dev/null | paste -sd/; }

stop_pid() {  # stop_pid NAME PID
  local name=$1 pid=$2
  alive "$name" "$pid" || return 0
  as_root kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do
    alive "$name" "$pid" || return 0
    sleep 0.1
  done
  log "$name ($pid) ignored SIGTERM; sending SIGKILL"
  as_root kill -KILL "$pid" 2>/dev/null || true
}

stop_started() {
  [ -f "$STARTED" ] || return 0
  local ctld
  ctld=$(recorded_pid slurmctld)
  if alive slurmctld "$ctld" && [ -f "$CONF" ]; then
    # Let running jobs end through Slurm so no slurmstepd outlives slurmd.
    local jobs
    jobs=$(slurm squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      slurm scancel $jobs 2>/dev/null || true
      # KillWait (30 s) is how long a job may take to checkpoint after SIGTERM.
      for _ in $(seq 80); do
        [ -z "$(slurm squeue -h -t RUNNING,COMPLETING -o %A 2>/dev/null)" ] && break
        sleep 0.5
      done
    fi
  fi
  stop_pid slurmd "$(recorded_pid slurmd)"
  stop_pid slurmctld "$ctld"
  stop_pid munged "$(recorded_pid munged)"
  as_root rm -rf "$(dirname "$MUNGE")"
  rm -f "$STARTED" "$ROOT/run/slurmctld.pid" "$ROOT/run/slurmd.pid"
}

cmd_down() {
  if [ ! -f "$STARTED" ]; then
    log "not running (no $STARTED)"
    return 0
  fi
  need_root
  stop_started
  log "down"
}

cmd_status() {
  local up=0 name pid
  for name in munged slurmctld slurmd; do
    pid=$(recorded_pid "$name")
    if alive "$name" "$pid"; then
      echo "$name: running (pid $pid)"
    else
      echo "$name: not running"
      up=1
    fi
  done
  if [ $up -eq 0 ]; then
    echo "SLURM_CONF=$CONF"
    echo "ports: $(conf_ports) (slurmctld/slurmd)"
    slurm sinfo -o '%P %a %D %T %c %m %G' || up=1
  fi
  return $up
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) print_env ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
