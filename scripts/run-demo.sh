#!/usr/bin/env bash
# `make run`: the daemon in --demo mode on this machine. Everything it keeps (its state,
# so the web password survives a restart, and the broker's config and log) lives in one
# git-ignored folder, ${DEMO_DIR:-.demo}; nothing is left in /tmp. If mosquitto is
# installed and 127.0.0.1:${DEMO_BROKER_PORT:-1883} is free, a private broker is started
# there first (in its own session, so Ctrl-C reaches it only after the daemon has said
# goodbye) and stopped afterwards. The daemon dials that same port.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${DEMO_BROKER_PORT:-1883}"
demo_dir="${DEMO_DIR:-.demo}"
mkdir -p "$demo_dir/state"
demo_dir="$(cd "$demo_dir" && pwd)"
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
broker_pid=""
cleanup() {
  if [ -n "$broker_pid" ]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_free "$port"; then
  echo "run: 127.0.0.1:$port is taken; the demo uses whatever listens there as its broker"
elif [ -x "$mosquitto_bin" ]; then
  conf="$demo_dir/mosquitto.conf"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n' \
    "$port" > "$conf"
  setsid "$mosquitto_bin" -c "$conf" >"$demo_dir/mosquitto.log" 2>&1 &
  broker_pid=$!
  echo "run: local mosquitto on 127.0.0.1:$port (pid $broker_pid)"
else
  echo "run: no mosquitto installed; the demo runs without a broker (DEMO_BROKER_PORT=$port)"
fi

export VG_MQTT__PORT="${VG_MQTT__PORT:-$port}"
export VG_GATEWAY__STATE_DIR="${VG_GATEWAY__STATE_DIR:-$demo_dir/state}"
.venv/bin/village-gateway run --demo "$@" &
daemon=$!
# Pass a stop on to the daemon, then keep waiting until it has really exited: a trapped
# signal interrupts `wait`, the daemon's own exit status comes from the last one.
trap 'kill -TERM "$daemon" 2>/dev/null || true' INT TERM
status=0
while kill -0 "$daemon" 2>/dev/null; do
  wait "$daemon" && status=0 || status=$?
done
exit "$status"
