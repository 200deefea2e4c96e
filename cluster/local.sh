#!/usr/bin/env bash
# A Ray cluster of several nodes on this machine, for trying embedserve's placement
# (fractional GPUs, custom resources, node loss) without a cloud. See cluster/README.md.
#
#   cluster/local.sh start [--port 6390] [--head-cpus 2] [--head-gpus 0] [--head-resources JSON]
#                          [--workers 1] [--cpus 2] [--gpus 0] [--resources JSON]
#   cluster/local.sh add   [--workers 1] [--cpus 2] [--gpus 0] [--resources JSON]
#   cluster/local.sh stop      # stops only the nodes this script started
#   cluster/local.sh status    # `ray status` of the cluster
#
# GPUs here are logical: Ray schedules by the count you give, whatever the hardware.
# Token authentication (Ray >= 2.60): a token is created in ~/.ray/auth_token if there is
# none, and every node and client runs with RAY_AUTH_MODE=token. Set RAY_AUTH_MODE=disabled
# to start the cluster without it.
set -euo pipefail

STATE_DIR=${EMBEDSERVE_LOCAL_CLUSTER_DIR:-$HOME/.embedserve/local-cluster}
RAY=${RAY:-ray}
PYTHON=${PYTHON:-python3}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

die() { echo "local.sh: $*" >&2; exit 2; }

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The agent ports default to fixed numbers; several nodes on one host need their own.
agent_ports() {
    echo "--dashboard-agent-listen-port=$(free_port) --dashboard-agent-grpc-port=$(free_port)" \
        "--metrics-export-port=$(free_port) --runtime-env-agent-port=$(free_port)"
}

# Each node runs `ray start --block` in a process group of its own: stopping it stops its
# raylet and workers, and nothing else on the machine (unlike `ray stop`).
launch() {
    local name=$1; shift
    setsid "$RAY" start --block "$@" >"$STATE_DIR/$name.log" 2>&1 &
    echo $! >"$STATE_DIR/$name.pid"
}

alive_nodes() {
    "$PYTHON" - "$(cat "$STATE_DIR/address")" <<'EOF'
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(node["Alive"] for node in ray.nodes()))
EOF
}

wait_for_nodes() {
    local expected=$1
    for _ in $(seq 60); do
        [[ "$(alive_nodes 2>/dev/null || echo 0)" -ge "$expected" ]] && return 0
        sleep 2
    done
    die "only $(alive_nodes 2>/dev/null || echo 0) of $expected nodes came up; logs in $STATE_DIR"
}

node_count() { find "$STATE_DIR" -name '*.pid' | wc -l; }

add_workers() {
    local workers=1 cpus=2 gpus=0 resources='{}'
    while [[ $# -gt 0 ]]; do
        case $1 in
            --workers) workers=$2 ;;
            --cpus) cpus=$2 ;;
            --gpus) gpus=$2 ;;
            --resources) resources=$2 ;;
            *) die "unknown option $1" ;;
        esac
        shift 2
    done
    local address first
    address=$(cat "$STATE_DIR/address")
    first=$(node_count)
    for i in $(seq "$first" $((first + workers - 1))); do
        # shellcheck disable=SC2046 # agent_ports is a list of flags
        launch "worker-$i" --address="$address" --num-cpus="$cpus" --num-gpus="$gpus" \
            --resources="$resources" $(agent_ports)
    done
    wait_for_nodes "$(node_count)"
    echo "workers added: $workers x (CPUs $cpus, GPUs $gpus, resources $resources)"
}

start() {
    local port=6390 head_cpus=2 head_gpus=0 head_resources='{}' worker_args=()
    while [[ $# -gt 0 ]]; do
        case $1 in
            --port) port=$2 ;;
            --head-cpus) head_cpus=$2 ;;
            --head-gpus) head_gpus=$2 ;;
            --head-resources) head_resources=$2 ;;
            --workers | --cpus | --gpus | --resources) worker_args+=("$1" "$2") ;;
            *) die "unknown option $1" ;;
        esac
        shift 2
    done
    [[ -e "$STATE_DIR/head.pid" ]] && die "a cluster is running (pid $(cat "$STATE_DIR/head.pid")); stop it first"
    mkdir -p "$STATE_DIR"
    if [[ $RAY_AUTH_MODE == token ]]; then
        "$RAY" get-auth-token --generate >/dev/null  # creates ~/.ray/auth_token if missing
    fi
    local dashboard
    dashboard=$(free_port)
    echo "127.0.0.1:$port" >"$STATE_DIR/address"
    # shellcheck disable=SC2046
    launch head --head --node-ip-address=127.0.0.1 --port="$port" \
        --num-cpus="$head_cpus" --num-gpus="$head_gpus" --resources="$head_resources" \
        --dashboard-port="$dashboard" --ray-client-server-port="$(free_port)" $(agent_ports)
    wait_for_nodes 1
    add_workers "${worker_args[@]}"
    echo "cluster at 127.0.0.1:$port, dashboard http://127.0.0.1:$dashboard" \
        "(RAY_AUTH_MODE=$RAY_AUTH_MODE); for example:"
    echo "  embedserve serve --address 127.0.0.1:$port --config cluster/embedserve-cluster.yaml"
    echo "  embedserve build-config CONFIG -o serve.yaml &&" \
        "RAY_AUTH_MODE=$RAY_AUTH_MODE serve deploy serve.yaml -a http://127.0.0.1:$dashboard"
    echo "  embedserve status --address 127.0.0.1:$port"
}

# Where `ray start` records the cluster that `ray.init()`, `serve run` and `ray status`
# join by default (Ray's temp dir rule on Linux).
ray_address_file() { echo "${RAY_TMPDIR:-${TMPDIR:-/tmp}}/ray/ray_current_cluster"; }

stop() {
    [[ -d "$STATE_DIR" ]] || { echo "no local cluster"; return 0; }
    local pidfile pid head_pid="" address pointer
    [[ -e "$STATE_DIR/head.pid" ]] && head_pid=$(cat "$STATE_DIR/head.pid")
    address=$(cat "$STATE_DIR/address" 2>/dev/null || true)
    # Workers first, so the head does not watch them die one by one.
    for pidfile in $(ls "$STATE_DIR"/worker-*.pid 2>/dev/null) "$STATE_DIR/head.pid"; do
        [[ -e "$pidfile" ]] || continue
        pid=$(cat "$pidfile")
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
    # Stopped by a signal, not `ray stop`, the head leaves its address recorded, and Ray
    # would retry it for minutes. Only this head's: another `ray start` may have replaced it.
    pointer=$(ray_address_file)
    if [[ -n $address && -e $pointer && "$(cat "$pointer")" == "$address" ]] &&
        ! { [[ -n $head_pid ]] && kill -0 "$head_pid" 2>/dev/null; }; then
        rm -f "$pointer"
    fi
    rm -f "$STATE_DIR/address"
    echo "local cluster stopped"
}

case ${1:-} in
    start) shift; start "$@" ;;
    add) shift; add_workers "$@" ;;
    stop) stop ;;
    status) "$RAY" status --address "$(cat "$STATE_DIR/address")" ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
esac
