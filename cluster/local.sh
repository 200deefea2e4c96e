#!/usr/bin/env bash
# A Ray cluster of several nodes on this machine, for trying embedserve's placement
# (fractional GPUs, custom resources, node loss) without a cloud. See cluster/README.md.
#
#   cluster/local.sh start [--port 6390] [--head-cpus 2] [--head-gpus 0] [--head-resources JSON]
#                          [--workers 1] [--cpus 2] [--gpus 0] [--resources JSON]
#                          [--gcs-redis HOST:PORT [--gcs-restart-after 1]]
#   cluster/local.sh add   [--workers 1] [--cpus 2] [--gpus 0] [--resources JSON]
#   cluster/local.sh stop      # stops only the nodes this script started
#   cluster/local.sh status    # `ray status` of the cluster
#
# GPUs here are logical: Ray schedules by the count you give, whatever the hardware.
# --gcs-redis: GCS fault tolerance. The head's GCS keeps its state in that Redis (a fresh
# namespace per start), and cluster/gcs_keeper.py restarts a GCS that dies, after
# --gcs-restart-after seconds, as KubeRay restarts a head pod; serving goes on meanwhile.
# Token authentication (Ray >= 2.60): a token is created in ~/.ray/auth_token if there is
# none, and every node and client runs with RAY_AUTH_MODE=token. Set RAY_AUTH_MODE=disabled
# to start the cluster without it.
set -euo pipefail

STATE_DIR=${EMBEDSERVE_LOCAL_CLUSTER_DIR:-$HOME/.embedserve/local-cluster}
# How long `stop` lets a node shut down gracefully before it kills what is left.
STOP_GRACE_S=${EMBEDSERVE_LOCAL_CLUSTER_STOP_GRACE_S:-20}
KEEPER="$(cd "$(dirname "$0")" && pwd)/gcs_keeper.py"
RAY=${RAY:-ray}
PYTHON=${PYTHON:-python3}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
# Every node's runtime-env agent loads embedserve's plugin (runtime_env.embedserve_overlay).
export RAY_RUNTIME_ENV_PLUGINS=${RAY_RUNTIME_ENV_PLUGINS:-'[{"class": "embedserve.runtime.overlay_env.OverlayPlugin"}]'}

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

# A head with GCS fault tolerance: `ray start` without --block (its watch would stop the
# node when the GCS dies), then the keeper in the same process group, so that a restarted
# GCS belongs to the node and `stop` stops all of it.
launch_fault_tolerant_head() {
    local redis=$1 restart_after=$2; shift 2
    RAY_REDIS_ADDRESS=$redis RAY_external_storage_namespace="embedserve-local-$(date +%s)-$$" \
        KEEPER_PYTHON=$PYTHON KEEPER=$KEEPER RESTART_AFTER=$restart_after \
        setsid bash -c '"$0" start "$@" &&
            exec "$KEEPER_PYTHON" "$KEEPER" --restart-after "$RESTART_AFTER"' \
        "$RAY" "$@" >"$STATE_DIR/head.log" 2>&1 &
    echo $! >"$STATE_DIR/head.pid"
}

alive_nodes() {
    "$PYTHON" - "$(cat "$STATE_DIR/address")" <<'EOF'
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(node["Alive"] for node in ray.nodes()))
EOF
}

head_address() {
    "$PYTHON" - "$(cat "$STATE_DIR/address")" <<'EOF'
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
(head,) = [n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]]
print(f"{head['NodeManagerAddress']}:{sys.argv[1].rpartition(':')[2]}")
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
    local gcs_redis="" gcs_restart_after=1
    while [[ $# -gt 0 ]]; do
        case $1 in
            --port) port=$2 ;;
            --head-cpus) head_cpus=$2 ;;
            --head-gpus) head_gpus=$2 ;;
            --head-resources) head_resources=$2 ;;
            --workers | --cpus | --gpus | --resources) worker_args+=("$1" "$2") ;;
            --gcs-redis) gcs_redis=$2 ;;
            --gcs-restart-after) gcs_restart_after=$2 ;;
            *) die "unknown option $1" ;;
        esac
        shift 2
    done
    [[ -e "$STATE_DIR/head.pid" ]] && die "a cluster is running (pid $(cat "$STATE_DIR/head.pid")); stop it first"
    mkdir -p "$STATE_DIR"
    if [[ $RAY_AUTH_MODE == token ]]; then
        "$RAY" get-auth-token --generate >/dev/null  # creates ~/.ray/auth_token if missing
    fi
    local dashboard head_args
    dashboard=$(free_port)
    echo "127.0.0.1:$port" >"$STATE_DIR/address"
    echo "http://127.0.0.1:$dashboard" >"$STATE_DIR/dashboard"
    # shellcheck disable=SC2207 # agent_ports is a list of flags
    head_args=(--head --node-ip-address=127.0.0.1 --port="$port"
        --num-cpus="$head_cpus" --num-gpus="$head_gpus" --resources="$head_resources"
        --dashboard-port="$dashboard" --ray-client-server-port="$(free_port)" $(agent_ports))
    if [[ -n $gcs_redis ]]; then
        launch_fault_tolerant_head "$gcs_redis" "$gcs_restart_after" "${head_args[@]}"
    else
        launch head "${head_args[@]}"
    fi
    wait_for_nodes 1
    # Ray gives the head the machine's address, not 127.0.0.1, and records that one in
    # ray_current_cluster: record it too (`stop` forgets Ray's record by it).
    head_address >"$STATE_DIR/address.new" && mv "$STATE_DIR/address.new" "$STATE_DIR/address"
    add_workers "${worker_args[@]}"
    echo "cluster at $(cat "$STATE_DIR/address"), dashboard http://127.0.0.1:$dashboard" \
        "(RAY_AUTH_MODE=$RAY_AUTH_MODE); for example:"
    echo "  embedserve serve --address $(cat "$STATE_DIR/address") --config cluster/embedserve-cluster.yaml"
    echo "  embedserve build-config CONFIG -o serve.yaml &&" \
        "RAY_AUTH_MODE=$RAY_AUTH_MODE serve deploy serve.yaml -a http://127.0.0.1:$dashboard"
    echo "  embedserve status --address $(cat "$STATE_DIR/address")"
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
        # The group, not its leader: a fault-tolerant head's `ray start` has exited.
        for _ in $(seq "$STOP_GRACE_S"); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        for _ in $(seq 10); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
        rm -f "$pidfile"
    done
    # Stopped by a signal, not `ray stop`, the head leaves its address recorded, and Ray
    # would retry it for minutes. Only this head's: another `ray start` may have replaced it.
    pointer=$(ray_address_file)
    if [[ -n $address && -e $pointer && "$(cat "$pointer")" == "$address" ]] &&
        ! { [[ -n $head_pid ]] && kill -0 -- "-$head_pid" 2>/dev/null; }; then
        rm -f "$pointer"
    fi
    rm -f "$STATE_DIR/address" "$STATE_DIR/dashboard"
    echo "local cluster stopped"
}

case ${1:-} in
    start) shift; start "$@" ;;
    add) shift; add_workers "$@" ;;
    stop) stop ;;
    status) "$RAY" status --address "$(cat "$STATE_DIR/address")" ;;
    *) sed -n '2,18p' "$0"; exit 2 ;;
esac
