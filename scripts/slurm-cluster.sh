#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for tests and for trying hpcbench out.
#
#   scripts/slurm-cluster.sh start  DIR [--accounting] [--name NAME]
#   scripts/slurm-cluster.sh stop   DIR
#   scripts/slurm-cluster.sh status DIR
#
# Everything lives under DIR: slurm.conf, state, spool, logs, pid files and, with --accounting,
# a MariaDB instance of its own (datadir, socket, port) and slurmdbd. Ports are picked free at each
# start, so several clusters (different DIR and NAME) can run at the same time; a client picks one with
#   export SLURM_CONF=DIR/slurm.conf
# which `start` prints as its last line.
#
# Two nodes, each its own host as on a production cluster: node N is a slurmd in its own network,
# UTS and cgroup namespaces (`hostname` prints nodeN; job steps inherit all three), with
#   mgmt0  on the management network (a bridge; the host holds .1), node N at .(10+N), default route;
#   hsn0   on the high-speed network (another bridge, host .1), node N at .(10+N), no default route.
# Each cluster gets its own pair of /24 subnets (10.201.K.0/24 and 10.202.K.0/24, K picked free under
# a lock) and its own namespace, bridge, veth and cgroup names (slcK-...), listed in DIR/network.
# Names resolve as on ALCF systems, from /etc/netns/<netns>/hosts (which `ip netns exec` mounts over
# /etc/hosts): nodeK is node K's management address, nodeK.hsn.test its high-speed address. Nodes
# have no DNS (a resolv.conf without servers there: unknown names fail at once). The filesystem is
# shared. slurmctld (and slurmdbd, MariaDB) run on the host; nodes reach slurmctld at the host's
# management address. Node CPU counts are the ones `slurmd -C` detects, and tasks are bound to the
# CPUs Slurm gives them: task/cgroup,task/affinity with proctrack/cgroup where the host has the cgroup
# v1 cpuset and freezer controllers (each node's cgroup tree is slcK-nodeN in those hierarchies),
# else task/affinity with proctrack/linuxproc.
#
# munged is shared by all clusters and left running by `stop`; every other daemon is ended by `stop`
# through its pid file, then the namespaces, bridges, veths, /etc/netns files and cgroups go.
# Needs root.
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

# ---------------------------------------------------------------- nodes: namespaces, networks, cgroups

NODES=(node1 node2)
NET_FILE=$DIR/network
NET_LOCK=/run/lock/slurm-cluster-net.lock    # picking and creating networks: one start at a time
MGMT_NET=10.201                              # cluster K's management network: 10.201.K.0/24
HSN_NET=10.202                               # cluster K's high-speed network: 10.202.K.0/24
HSN_DOMAIN=hsn.test                          # nodeN.hsn.test is node N's high-speed name
SLURMD_PORT=6818                             # each node is its own host: all use Slurm's default port

node_addr() { echo "$1.$2.$((10 + ${3#node}))"; }    # node_addr NET K NODE

# net_taken K: some interface, route, namespace or /etc/netns entry already uses cluster K's
# subnets or names (another cluster's, or anything else on this host).
net_taken() {
    local k=$1 p=slc$1
    { ip -4 -o addr show; ip -4 route show; } | sed 's/^/ /' \
        | grep -qF -e " $MGMT_NET.$k." -e " $HSN_NET.$k." && return 0
    ip -o link show | grep -qF ": $p-" && return 0
    ip netns list | grep -q "^$p-" && return 0
    compgen -G "/etc/netns/$p-*" >/dev/null || compgen -G "/sys/fs/cgroup/*/$p-*" >/dev/null
}

# pick_net: print a free K in 1-250, trying first one derived from DIR (stable across restarts).
pick_net() {
    local start i k
    start=$(cksum <<<"$DIR" | cut -d' ' -f1)
    for ((i = 0; i < 250; i++)); do
        k=$(((start + i) % 250 + 1))
        net_taken "$k" || { echo "$k"; return 0; }
    done
    return 1
}

add_bridge() {  # add_bridge NAME ADDR/LEN
    ip link add "$1" type bridge
    ip link set "$1" alias "$DIR"    # marks the cluster's networks as this DIR's (see nodes_down)
    ip addr add "$2" dev "$1"
    ip link set "$1" up
}

add_port() {  # add_port BRIDGE HOST_IF NETNS NODE_IF ADDR: a veth from the bridge into the node
    ip link add "$2" type veth peer name "$4" netns "$3"
    ip link set "$2" master "$1" up
    ip -n "$3" addr add "$5/24" dev "$4"
    ip -n "$3" link set "$4" up
}

write_node_etc() {  # write_node_etc K NETNS: the files `ip netns exec` mounts over /etc/...
    local k=$1 dir=/etc/netns/$2 node
    mkdir -p "$dir"
    {
        echo "# written by scripts/slurm-cluster.sh for cluster $NAME ($DIR)"
        echo "127.0.0.1 localhost"
        echo "::1 localhost ip6-localhost ip6-loopback"
        for node in "${NODES[@]}"; do
            echo "$(node_addr "$MGMT_NET" "$k" "$node") $node"
            echo "$(node_addr "$HSN_NET" "$k" "$node") $node.$HSN_DOMAIN"
        done
    } >"$dir/hosts"
    echo "# no name server on the test cluster's nodes: names come from /etc/hosts" >"$dir/resolv.conf"
}

write_net_file() {  # write_net_file K: what clients (and `stop`) need to know
    local k=$1 node
    {
        echo "prefix=slc$k"
        echo "mgmt_subnet=$MGMT_NET.$k.0/24"
        echo "hsn_subnet=$HSN_NET.$k.0/24"
        echo "hsn_domain=$HSN_DOMAIN"
        for node in "${NODES[@]}"; do    # NODE=NETNS MGMT_ADDRESS HSN_ADDRESS
            echo "$node=slc$k-$node $(node_addr "$MGMT_NET" "$k" "$node") $(node_addr "$HSN_NET" "$k" "$node")"
        done
    } >"$NET_FILE.tmp"
    mv "$NET_FILE.tmp" "$NET_FILE"
}

net_create() {  # net_create K: bridges, one namespace per node with mgmt0 and hsn0, /etc/netns files
    local k=$1 p=slc$1 node n ns
    add_bridge "$p-mgmt" "$MGMT_NET.$k.1/24"
    add_bridge "$p-hsn" "$HSN_NET.$k.1/24"
    for node in "${NODES[@]}"; do
        n=${node#node}
        ns=$p-$node
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        add_port "$p-mgmt" "$p-n${n}m" "$ns" mgmt0 "$(node_addr "$MGMT_NET" "$k" "$node")"
        add_port "$p-hsn" "$p-n${n}h" "$ns" hsn0 "$(node_addr "$HSN_NET" "$k" "$node")"
        ip -n "$ns" route add default via "$MGMT_NET.$k.1" dev mgmt0
        write_node_etc "$k" "$ns"
    done
}

# cgroup_mount CONTROLLER: where the host mounts that cgroup v1 controller ('' if nowhere).
cgroup_mount() {
    awk -v c="$1" '$3 == "cgroup" && index("," $4 ",", "," c ",") { print $2; exit }' /proc/self/mounts
}

# Tasks are confined with cgroups (task/cgroup: a task cannot widen its CPU set; proctrack/cgroup)
# where the host has the cgroup v1 cpuset and freezer controllers, else by affinity alone.
NODE_CGROUPS=(cpuset freezer)
use_cgroups() {
    local c
    for c in "${NODE_CGROUPS[@]}"; do [[ -n $(cgroup_mount "$c") ]] || return 1; done
}

# enter_node_cgroups NETNS: move this shell into the node's own cgroups, where the node's cgroup
# namespace will be rooted: each node of each cluster then has a cgroup tree of its own.
enter_node_cgroups() {
    local c dir
    for c in "${NODE_CGROUPS[@]}"; do
        dir=$(cgroup_mount "$c")/$1
        mkdir -p "$dir"
        if [[ $c == cpuset ]]; then    # a new cpuset has no CPUs and no memory nodes to run on
            cat "$dir/../cpuset.cpus" >"$dir/cpuset.cpus"
            cat "$dir/../cpuset.mems" >"$dir/cpuset.mems"
        fi
        echo "$BASHPID" >"$dir/cgroup.procs"
    done
}

remove_node_cgroups() {  # remove_node_cgroups NETNS: depth first (cgroupfs removes only empty dirs)
    local c dir
    for c in "${NODE_CGROUPS[@]}"; do
        dir=$(cgroup_mount "$c")/$1
        [[ -d $dir && $dir != /$1 ]] || continue
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null \
            || log "could not remove cgroup $dir (processes still in it?)"
    done
}

net_up() {
    # A subshell holds the lock, so no daemon started later inherits its descriptor.
    (
        flock -w 60 9 || die "could not lock $NET_LOCK within 60s"
        local k
        k=$(pick_net) || die "no free pair of subnets $MGMT_NET.K.0/24, $HSN_NET.K.0/24 (K in 1-250)"
        write_net_file "$k"    # first, so that `stop` cleans up after a half-done creation
        net_create "$k"
    ) 9>"$NET_LOCK"
    echo "networks up: $(net_summary)"
}

net_summary() { echo "management $(conf_value "$NET_FILE" mgmt_subnet), high-speed $(conf_value "$NET_FILE" hsn_subnet)"; }

# nodes_down: remove what net_up and start_slurmd made (namespaces, networks, /etc/netns, cgroups).
nodes_down() {
    [[ -f $NET_FILE ]] || return 0
    local p node n
    p=$(conf_value "$NET_FILE" prefix)
    [[ $p =~ ^slc[0-9]+$ ]] || die "$NET_FILE: bad prefix '$p'"
    (
        flock -w 60 9 || die "could not lock $NET_LOCK within 60s"
        # Leftovers of an earlier start whose names another cluster took since are not ours.
        if [[ -e /sys/class/net/$p-mgmt && $(cat "/sys/class/net/$p-mgmt/ifalias") != "$DIR" ]]; then
            log "$p-mgmt belongs to another cluster now; leaving its networks alone"
            exit 0
        fi
        for node in "${NODES[@]}"; do
            n=${node#node}
            # Deleting a veth deletes its peer at once; a namespace's own teardown is asynchronous.
            ip link del "$p-n${n}m" 2>/dev/null || true
            ip link del "$p-n${n}h" 2>/dev/null || true
            ip netns del "$p-$node" 2>/dev/null || true
            rm -rf "/etc/netns/${p:?}-$node"
            remove_node_cgroups "$p-$node"
        done
        ip link del "$p-hsn" 2>/dev/null || true
        ip link del "$p-mgmt" 2>/dev/null || true
        echo "removed namespaces, networks and cgroups $p-*"
    ) 9>"$NET_LOCK"
    rm -f "$NET_FILE"
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

# node_hardware: the node layout slurmd detects here (CPUs, boards, sockets, cores, threads).
node_hardware() {
    SLURM_CONF=/dev/null slurmd -C | head -n 1 | tr ' ' '\n' \
        | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' '
}

write_slurm_conf() {
    local ctld_port=$1 dbd_port=$2 k hardware node
    k=$(conf_value "$NET_FILE" prefix)
    k=${k#slc}
    hardware=$(node_hardware)
    [[ $hardware == *CPUs=* ]] || die "slurmd -C did not report this machine's CPUs"
    {
        cat <<EOF
# written by scripts/slurm-cluster.sh: two nodes in network namespaces, state and logs under this folder
ClusterName=$NAME
SlurmctldHost=localhost($MGMT_NET.$k.1)
SlurmctldPort=$ctld_port
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=$PROCTRACK
TaskPlugin=$TASK_PLUGIN
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
EOF
        for node in "${NODES[@]}"; do
            echo "NodeName=$node NodeHostname=$node NodeAddr=$(node_addr "$MGMT_NET" "$k" "$node")" \
                "${hardware}RealMemory=4000 State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    rm -f "$DIR/cgroup.conf"
    if [[ $CGROUPS == 1 ]]; then
        # Cores only: memory is the host's business (its memory cgroups are left alone).
        printf '%s\n' "# written by scripts/slurm-cluster.sh" CgroupPlugin=cgroup/v1 ConstrainCores=yes \
            ConstrainRAMSpace=no ConstrainSwapSpace=no ConstrainDevices=no >"$DIR/cgroup.conf"
    fi
}

# ---------------------------------------------------------------- the verbs

nodes_idle() {
    # Both nodes idle (or busy with work: mix/alloc), none down/drained/unknown.
    local out
    out=$(sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
    [[ $(grep -cE '^node[12] (idle|mix|alloc)$' <<<"$out") == 2 ]]
}

node_netns() { echo "$(conf_value "$NET_FILE" prefix)-$1"; }

is_up() {
    local node
    [[ -f $NET_FILE ]] && pid_alive "$RUN/slurmctld.pid" slurmctld || return 1
    for node in "${NODES[@]}"; do
        [[ -e /run/netns/$(node_netns "$node") ]] && pid_alive "$RUN/slurmd-$node.pid" slurmd || return 1
    done
    [[ ! -f $DIR/accounting ]] || pid_alive "$DBD_PID" slurmdbd
}

# node_init NODE MOUNTS: runs inside the node's new namespaces and becomes its slurmd.
node_init() {
    local type dir opts
    # `ip netns exec` put a sysfs of the node's own network namespace over /sys, which hides the
    # cgroup hierarchies slurmd needs: mount the host's ones again (same types, same options; in the
    # node's cgroup namespace each shows the node's own tree).
    while read -r type dir opts; do
        [[ -n $type ]] || continue
        mkdir -p "$dir"
        mount -t "$type" -o "$opts" "$type" "$dir"
    done <<<"$2"
    hostname "$1"
    exec slurmd -N "$1"
}

# start_slurmd NODE: slurmd in the node's network namespace (through `ip netns exec`, which also
# mounts the node's /etc/hosts), in a UTS namespace named after the node and in a cgroup namespace.
start_slurmd() {
    local node=$1 ns mounts
    ns=$(node_netns "$node")
    (
        [[ $CGROUPS == 0 ]] || enter_node_cgroups "$ns"
        mounts=$(awk '$2 ~ "^/sys/fs/cgroup(/|$)" { print $3, $2, $4 }' /proc/self/mounts)
        exec ip netns exec "$ns" unshare --uts --cgroup -- \
            bash -c "set -euo pipefail; $(declare -f node_init); node_init \"\$@\"" node-init "$node" "$mounts"
    )
    wait_pidfile "$RUN/slurmd-$node.pid" slurmd 20 "$LOGS/slurmd-$node.log"
}

do_start() {
    local prog needed=(slurmctld slurmd sinfo squeue scancel munged munge unmunge ip unshare flock)
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

    mkdir -p "$DIR/state" "$DIR/spool/node1" "$DIR/spool/node2" "$RUN" "$LOGS" /run/lock
    if use_cgroups; then
        CGROUPS=1 PROCTRACK=proctrack/cgroup TASK_PLUGIN=task/cgroup,task/affinity
    else
        log "no cgroup v1 ${NODE_CGROUPS[*]} controllers here: binding tasks by affinity only"
        CGROUPS=0 PROCTRACK=proctrack/linuxproc TASK_PLUGIN=task/affinity
    fi
    ensure_munge
    net_up

    local ctld_port dbd_port=0 db_port=0
    pick_ports 1; ctld_port=$PORT
    rm -f "$DIR/accounting"
    if [[ $ACCOUNTING == 1 ]]; then
        pick_ports 1; db_port=$PORT
        pick_ports 1; dbd_port=$PORT
        touch "$DIR/accounting"
    fi
    write_slurm_conf "$ctld_port" "$dbd_port"

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
    for node in "${NODES[@]}"; do
        start_slurmd "$node"
    done
    echo "started slurmd ${NODES[*]} in namespaces $(node_netns '*'), port $SLURMD_PORT"

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
    for node in "${NODES[@]}"; do
        stop_pid "$RUN/slurmd-$node.pid" slurmd
    done
    stop_pid "$RUN/slurmctld.pid" slurmctld
    stop_pid "$DBD_PID" slurmdbd
    stop_pid "$DB_PID" mariadbd
    nodes_down
}

do_status() {
    if [[ -f $CONF ]] && is_up && nodes_idle; then
        echo "up: cluster $(conf_value "$CONF" ClusterName)$([[ -f $DIR/accounting ]] && echo ', accounting on')"
        sinfo -N -o '%N %t %c %o %n'
        echo "networks: $(net_summary)"
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
