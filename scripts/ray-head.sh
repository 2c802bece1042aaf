#!/usr/bin/env bash
# Start or stop a local Ray head on 127.0.0.1 with token auth, for `ray job submit`.
#   scripts/ray-head.sh start   -> prints the export lines for RAY_ADDRESS / RAY_API_SERVER_ADDRESS
#   scripts/ray-head.sh stop
# Ports are chosen free so a second Ray on the machine (a test, another user) does not collide.
# Every port the head opens listens on loopback only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, see
# embedray/cluster/runtime.py); the auth token is ~/.ray/auth_token (or $RAY_AUTH_TOKEN_PATH),
# created with mode 0600 on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
STATE=${EMBEDRAY_RAY_STATE:-$PWD/.ray-head}
free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
case "${1:-}" in
start)
  mkdir -p "$STATE"
  echo "${EMBEDRAY_RAY_TMP:-/tmp/embedray-ray}" > "$STATE/tmp"
  gcs=$(free_port); dash=$(free_port); agent=$(free_port); metrics=$(free_port); client=$(free_port)
  echo "$client" > "$STATE/client-port"
  # shellcheck disable=SC2046
  export $("$BIN/python" -m embedray.cluster.runtime env)   # loopback only, token auth, offline models
  "$BIN/python" -m embedray.cluster.runtime token >/dev/null   # creates the token (0600) when missing
  export PATH="$PWD/$BIN:$PATH"   # jobs run `python` from this virtualenv
  "$BIN/ray" start --head --node-ip-address 127.0.0.1 --port "$gcs" \
    --dashboard-host 127.0.0.1 --dashboard-port "$dash" --dashboard-agent-listen-port "$agent" \
    --metrics-export-port "$metrics" --ray-client-server-port "$client" --num-cpus "${EMBEDRAY_NUM_CPUS:-2}" \
    --temp-dir "${EMBEDRAY_RAY_TMP:-/tmp/embedray-ray}" --disable-usage-stats >"$STATE/start.log" 2>&1 \
    || { cat "$STATE/start.log" >&2; exit 1; }
  printf 'export RAY_ADDRESS=127.0.0.1:%s RAY_API_SERVER_ADDRESS=http://127.0.0.1:%s RAY_AUTH_MODE=token\n' "$gcs" "$dash" | tee "$STATE/env"
  # the job server needs a moment after `ray start` returns
  for _ in $(seq 60); do
    RAY_AUTH_MODE=token RAY_API_SERVER_ADDRESS="http://127.0.0.1:$dash" "$BIN/ray" job list >/dev/null 2>&1 && exit 0
    sleep 1
  done
  echo "Ray head started but its job server did not answer on 127.0.0.1:$dash" >&2; exit 1
  ;;
stop)
  # Stop only this head: the processes under its temp dir and all their descendants (`ray stop`
  # would take down every Ray on the machine, a test's or another user's included).
  TMP=$(cat "$STATE/tmp" 2>/dev/null || echo "${EMBEDRAY_RAY_TMP:-/tmp/embedray-ray}")
  roots=$(pgrep -f -- "$TMP/session_" || true)
  tree() { for p in "$@"; do echo "$p"; tree $(pgrep -P "$p" || true); done; }
  pids=$(tree $roots | sort -u)
  [ -n "$pids" ] && kill $pids 2>/dev/null || true
  for _ in $(seq 20); do
    alive=$(for p in $pids; do kill -0 "$p" 2>/dev/null && echo "$p"; done || true)
    [ -z "$alive" ] && break
    sleep 0.5
  done
  [ -n "${alive:-}" ] && kill -9 $alive 2>/dev/null || true
  # a process Ray (re)spawned while we were stopping it: one more sweep
  # (the Ray client server's command line names its port, not the temp dir)
  client=$(cat "$STATE/client-port" 2>/dev/null || true)
  late=$( (pgrep -f -- "$TMP/session_"; [ -n "$client" ] && pgrep -f -- "ray.util.client.server.*--port=$client") || true)
  [ -n "$late" ] && kill -9 $late 2>/dev/null || true
  rm -rf "$STATE"
  ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
