#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for tests and for trying hpcbench out.
#
#   scripts/slurm-cluster.sh start  DIR [--accounting] [--name NAME]
#   scripts/slurm-cluster.sh stop   DIR
#   scripts/slurm-cluster.sh status DIR
#
# Everything lives under DIR: slurm.conf, state, spool, logs, pid files and, with --accounting,
# a MariaDB instance of its own (datadir, socket, port) and slurmdbd. Two nodes (node1, node2)
# are two slurmd daemons on localhost. Ports are picked free at each start, so several clusters
# (different DIR and NAME) can run at the same time; a client picks one with
#   export SLURM_CONF=DIR/slurm.conf
# which `start` prints as its last line. munged is shared by all clusters and left running by
# `stop`; every other daemon is ended by `stop` through its pid file. Needs root.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin    # the daemons live in sbin, which a non-login PATH may lack

usage() {
    echo "usage: $0 start|stop|status DIR [--accounting] [--name NAME]" >&2
    exit 2
}

log() { echo "slurm-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

START_TIMEOUT=${SLURM_CLUSTER_START_TIMEOUT:-60}

[[ $# -ge 2 ]] || usage
ACTION=$1
DIR=$2
shift 2
ACCOUNTING=0
NAME=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --accounting) ACCOUNTING=1 ;;
        --name) [[ $# -ge 2 ]] || usage; NAME=$2; shift ;;
        --name=*) NAME=${1#--name=} ;;
        *) usage ;;
    esac
    shift
done

if [[ $ACTION == start ]]; then
    mkdir -p "$DIR"
elif [[ ! -d $DIR ]]; then
    [[ $ACTION != status ]] || { echo "down: no cluster under $DIR"; exit 3; }
    [[ $ACTION != stop ]] || { echo "nothing to stop under $DIR"; exit 0; }
fi
DIR=$(cd "$DIR" && pwd -P)
CONF=$DIR/slurm.conf
DBD_CONF=$DIR/slurmdbd.conf
RUN=$DIR/run
LOGS=$DIR/log
export SLURM_CONF=$CONF

if [[ -z $NAME ]]; then
    # Slurm wants a short, lower-case cluster name.
    NAME=$(basename "$DIR" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9')
    NAME=${NAME:0:30}
    [[ -n $NAME ]] || NAME=local
fi
[[ $NAME =~ ^[a-z][a-z0-9_]{0,39}$ ]] || die "--name must be lower-case letters, digits or _ and start with a letter (got '$NAME')"

# ---------------------------------------------------------------- helpers

port_in_use() {
    # Something listens there (any address family we can reach over loopback).
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pick_ports N: set PORT to the first of N consecutive free ports in 10000-29999 (below the
# ephemeral range), none of them in TAKEN (ports this start already handed out).
TAKEN=" "
PORT=0
pick_ports() {
    local n=$1 base i ok tries
    for ((tries = 0; tries < 500; tries++)); do
        base=$((10000 + RANDOM % 19900))
        ok=1
        for ((i = 0; i < n; i++)); do
            if [[ $TAKEN == *" $((base + i)) "* ]] || port_in_use $((base + i)); then ok=0; break; fi
        done
        if [[ $ok == 1 ]]; then
            for ((i = 0; i < n; i++)); do TAKEN+="$((base + i)) "; done
            PORT=$base
            return 0
        fi
    done
    die "no $n free consecutive ports found"
}

# proc_alive PID COMM: the process lives (not a zombie) and runs the named program.
proc_alive() {
    local stat
    [[ -n $1 && -r /proc/$1/comm ]] || return 1
    [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# pid_alive PIDFILE COMM: the pid in the file is alive and runs the named program.
pid_alive() {
    local pid
    pid=$(tr -cd '0-9' 2>/dev/null <"$1") || return 1
    proc_alive "$pid" "$2"
}

# stop_pid PIDFILE COMM: TERM, wait up to 15 s, then KILL; only if the pid runs COMM.
stop_pid() {
    local file=$1 comm=$2 pid i
    pid=$(tr -cd '0-9' 2>/dev/null <"$file") || pid=""
    if ! proc_alive "$pid" "$comm"; then rm -f "$file"; return 0; fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        proc_alive "$pid" "$comm" || break
        sleep 0.1
    done
    if proc_alive "$pid" "$comm"; then
        log "$comm ($pid) did not stop on TERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$file"
    echo "stopped $comm ($pid)"
}

# wait_pidfile PIDFILE COMM SECONDS LOG: wait until the daemon wrote its pid file and lives.
wait_pidfile() {
    local file=$1 comm=$2 secs=$3 logfile=$4 i
    for ((i = 0; i < secs * 10; i++)); do
        pid_alive "$file" "$comm" && return 0
        sleep 0.1
    done
    log "$comm did not start within ${secs}s; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 2>/dev/null || true
    exit 1
}

conf_value() {  # conf_value FILE KEY: a KEY=VALUE line's value
    sed -n "s/^$2=//p" "$1" | head -n 1
}

# ---------------------------------------------------------------- munge

ensure_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0    # a munged is running already (ours from an earlier start, or the system's)
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        chown munge:munge /etc/munge
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key >/dev/null
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    runuser -u munge -- munged
    local i
    for ((i = 0; i < 50; i++)); do
        if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
            echo "started munged"
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 /var/log/munge/munged.log >&2 2>/dev/null || true
    die "munged does not answer"
}

# ---------------------------------------------------------------- MariaDB and slurmdbd

DB_DATA=$DIR/mysql/data
DB_SOCK=$DIR/mysql/mysqld.sock
DB_PID=$RUN/mariadbd.pid
DB_LOG=$LOGS/mariadbd.log
DBD_PID=$RUN/slurmdbd.pid
DBD_LOG=$LOGS/slurmdbd.log

db_query() {
    mariadb --no-defaults --protocol=socket --socket="$DB_SOCK" -u root -N -B -e "$1"
}

start_mariadb() {
    local port=$1 i
    mkdir -p "$DIR/mysql"
    if [[ ! -d $DB_DATA/mysql ]]; then
        rm -rf "$DB_DATA"
        mariadb-install-db --no-defaults --user=root --datadir="$DB_DATA" \
            --auth-root-authentication-method=socket --skip-test-db >"$LOGS/mariadb-install.log" 2>&1 \
            || { tail -n 30 "$LOGS/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    setsid mariadbd --no-defaults --user=root --datadir="$DB_DATA" --socket="$DB_SOCK" \
        --port="$port" --bind-address=127.0.0.1 --pid-file="$DB_PID" --log-error="$DB_LOG" \
        --skip-name-resolve --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
        --max-connections=50 --performance-schema=OFF </dev/null >>"$DB_LOG" 2>&1 &
    for ((i = 0; i < 300; i++)); do
        if pid_alive "$DB_PID" mariadbd && db_query "SELECT 1" >/dev/null 2>&1; then
            echo "started mariadbd on port $port"
            return 0
        fi
        sleep 0.1
    done
    log "mariadbd did not come up; last lines of $DB_LOG:"
    tail -n 30 "$DB_LOG" >&2 || true
    exit 1
}

start_slurmdbd() {
    local db_port=$1 dbd_port=$2 pass
    pass=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    db_query "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
              ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
              CREATE DATABASE IF NOT EXISTS slurm_acct_db;
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
              FLUSH PRIVILEGES;"
    umask 077
    cat >"$DBD_CONF" <<EOF
# written by scripts/slurm-cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$DBD_PID
LogFile=$DBD_LOG
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
    umask 022
    chmod 600 "$DBD_CONF"
    slurmdbd
    wait_pidfile "$DBD_PID" slurmdbd 20 "$DBD_LOG"
    local i
    for ((i = 0; i < 200; i++)); do
        port_in_use "$dbd_port" && { echo "started slurmdbd on port $dbd_port"; return 0; }
        sleep 0.1
    done
    log "slurmdbd does not listen on $dbd_port; last lines of $DBD_LOG:"
    tail -n 30 "$DBD_LOG" >&2 || true
    exit 1
}

# ---------------------------------------------------------------- slurm.conf

write_slurm_conf() {
    local ctld_port=$1 node_port=$2 dbd_port=$3
    {
        cat <<EOF
# written by scripts/slurm-cluster.sh: two nodes on localhost, state and logs under this folder
ClusterName=$NAME
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
PropagateResourceLimits=NONE
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# Job ids differ between clusters started side by side (per-job temp folders do not collide).
FirstJobId=$((ctld_port * 1000))
# Fast tests: schedule at once, enforce time limits promptly, forget finished jobs soon.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1,sched_min_interval=0
KillWait=15
OverTimeLimit=0
MinJobAge=30
InactiveLimit=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
UnkillableStepTimeout=30
EOF
        if [[ $ACCOUNTING == 1 ]]; then
            cat <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
EOF
        else
            cat <<EOF
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
EOF
        fi
        cat <<EOF
JobCompType=jobcomp/none
NodeName=node[1-2] NodeHostname=localhost NodeAddr=127.0.0.1 Port=$node_port-$((node_port + 1)) CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    } >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
}

# ---------------------------------------------------------------- the verbs

nodes_idle() {
    # Both nodes idle (or busy with work: mix/alloc), none down/drained/unknown.
    local out
    out=$(sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
    [[ $(grep -cE '^node[12] (idle|mix|alloc)$' <<<"$out") == 2 ]]
}

is_up() {
    pid_alive "$RUN/slurmctld.pid" slurmctld \
        && pid_alive "$RUN/slurmd-node1.pid" slurmd \
        && pid_alive "$RUN/slurmd-node2.pid" slurmd \
        && { [[ ! -f $DIR/accounting ]] || pid_alive "$DBD_PID" slurmdbd; }
}

do_start() {
    local prog needed=(slurmctld slurmd sinfo squeue scancel munged munge unmunge)
    [[ $ACCOUNTING == 0 ]] || needed+=(slurmdbd sacctmgr mariadbd mariadb mariadb-install-db)
    for prog in "${needed[@]}"; do
        command -v "$prog" >/dev/null || die "$prog is not installed: run scripts/install-deps.sh"
    done
    [[ $(id -u) == 0 ]] || die "must run as root (the daemons run as root)"

    if [[ -f $CONF ]] && is_up && nodes_idle; then
        echo "already up: cluster $(conf_value "$CONF" ClusterName)"
        echo "SLURM_CONF=$CONF"
        return 0
    fi
    do_stop >/dev/null 2>&1 || true    # half-started leftovers

    mkdir -p "$DIR/state" "$DIR/spool/node1" "$DIR/spool/node2" "$RUN" "$LOGS"
    ensure_munge

    local ctld_port node_port dbd_port=0 db_port=0
    pick_ports 1; ctld_port=$PORT
    pick_ports 2; node_port=$PORT
    rm -f "$DIR/accounting"
    if [[ $ACCOUNTING == 1 ]]; then
        pick_ports 1; db_port=$PORT
        pick_ports 1; dbd_port=$PORT
        touch "$DIR/accounting"
    fi
    write_slurm_conf "$ctld_port" "$node_port" "$dbd_port"

    if [[ $ACCOUNTING == 1 ]]; then
        start_mariadb "$db_port"
        start_slurmdbd "$db_port" "$dbd_port"
        # Register the cluster before slurmctld starts, so it reports jobs from the first one on.
        if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$NAME"; then
            sacctmgr -i add cluster "$NAME" >/dev/null || die "sacctmgr add cluster $NAME failed"
        fi
        echo "registered cluster $NAME in slurmdbd"
    fi

    slurmctld
    wait_pidfile "$RUN/slurmctld.pid" slurmctld 20 "$LOGS/slurmctld.log"
    echo "started slurmctld on port $ctld_port"
    local node
    for node in node1 node2; do
        slurmd -N "$node"
        wait_pidfile "$RUN/slurmd-$node.pid" slurmd 20 "$LOGS/slurmd-$node.log"
    done
    echo "started slurmd node1, node2 on ports $node_port-$((node_port + 1))"

    local i
    for ((i = 0; i < START_TIMEOUT * 5; i++)); do
        if nodes_idle; then
            echo "cluster $NAME up: 2 nodes idle$([[ $ACCOUNTING == 1 ]] && echo ', accounting on')"
            echo "SLURM_CONF=$CONF"
            return 0
        fi
        sleep 0.2
    done
    log "nodes not idle after ${START_TIMEOUT}s:"
    sinfo -N >&2 || true
    local f
    for f in "$LOGS/slurmctld.log" "$LOGS/slurmd-node1.log" "$LOGS/slurmd-node2.log"; do
        log "--- last lines of $f"
        tail -n 20 "$f" >&2 || true
    done
    exit 1
}

do_stop() {
    if [[ -f $CONF ]] && pid_alive "$RUN/slurmctld.pid" slurmctld; then
        # End this cluster's jobs first, so no job step outlives its slurmd.
        local jobs=()
        mapfile -t jobs < <(squeue -h -o %i 2>/dev/null || true)
        if [[ ${#jobs[@]} -gt 0 ]]; then
            scancel --full --quiet "${jobs[@]}" 2>/dev/null || true
            local i
            for ((i = 0; i < 100; i++)); do
                [[ -z $(squeue -h -t R,CG,S -o %i 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    local node
    for node in node1 node2; do
        stop_pid "$RUN/slurmd-$node.pid" slurmd
    done
    stop_pid "$RUN/slurmctld.pid" slurmctld
    stop_pid "$DBD_PID" slurmdbd
    stop_pid "$DB_PID" mariadbd
}

do_status() {
    if [[ -f $CONF ]] && is_up && nodes_idle; then
        echo "up: cluster $(conf_value "$CONF" ClusterName)$([[ -f $DIR/accounting ]] && echo ', accounting on')"
        sinfo -N
        echo "SLURM_CONF=$CONF"
        return 0
    fi
    echo "down: no running cluster under $DIR"
    return 3
}

case $ACTION in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *) usage ;;
esac
