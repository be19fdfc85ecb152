#!/usr/bin/env bash
# `make run`: the daemon in --demo mode on this machine. If mosquitto is installed and
# 127.0.0.1:${DEMO_BROKER_PORT:-1883} is free, a private broker is started there first
# (and stopped afterwards) so the demo has something to sync with.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${DEMO_BROKER_PORT:-1883}"
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
broker_pid=""
cleanup() { if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -x "$mosquitto_bin" ] && port_free "$port"; then
  conf="$(mktemp -t vg-demo-mosquitto.XXXXXX.conf)"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n' \
    "$port" > "$conf"
  "$mosquitto_bin" -c "$conf" >/dev/null 2>&1 &
  broker_pid=$!
  echo "run: local mosquitto on 127.0.0.1:$port (pid $broker_pid)"
fi

echo "run: web UI on http://127.0.0.1:${VG_WEB__PORT:-8080} — Ctrl-C stops"
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
