# shellcheck shell=bash
# Start mosquitto and docker-registry on free loopback ports for the demo and the benchmarks.
# Every started pid is recorded in TF_PIDS and killed by tf_stop_all (install it as an EXIT trap).

TF_PIDS=()

tf_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

tf_wait_port() { # port timeout_s
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# tf_start_mosquitto DIR -> sets TF_MQTT_PORT
tf_start_mosquitto() {
    local dir=$1
    mkdir -p "$dir"
    TF_MQTT_PORT=$(tf_free_port)
    {
        echo "listener $TF_MQTT_PORT 127.0.0.1"
        echo "allow_anonymous true"
        echo "persistence true"
        echo "persistence_location $dir/"
        echo "log_dest file $dir/mosquitto.log"
        echo "max_queued_messages 100000"
        [ "$(id -u)" -eq 0 ] && echo "user root"
    } >"$dir/mosquitto.conf"
    mosquitto -c "$dir/mosquitto.conf" >/dev/null 2>&1 &
    TF_PIDS+=($!)
    tf_wait_port "$TF_MQTT_PORT" 5 || { echo "error: mosquitto did not start; see $dir/mosquitto.log" >&2; return 1; }
}

# tf_start_registry DIR -> sets TF_REGISTRY (host:port)
tf_start_registry() {
    local dir=$1 port
    mkdir -p "$dir/storage"
    port=$(tf_free_port)
    cat >"$dir/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    TF_PIDS+=($!)
    tf_wait_port "$port" 5 || { echo "error: docker-registry did not start; see $dir/registry.log" >&2; return 1; }
    TF_REGISTRY="127.0.0.1:$port"
}

tf_stop_all() {
    local pid
    for pid in "${TF_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${TF_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    TF_PIDS=()
}
