#!/usr/bin/env bash
# Runs the Node client's tests against a real xray-server, started here on free loopback ports without warm-up
# and stopped whatever happens. Results: clients/node/test-results.tap (read by .ci/run).
# Usage: clients/node/scripts/test-with-server.sh PATH/TO/xray-server
set -euo pipefail
server_binary="$(realpath "$1")"
cd "$(dirname "$0")/.."
rm -f test-results.tap

if ! command -v node >/dev/null && command -v apt-get >/dev/null; then
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

free_port() { node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'; }
grpc_port="$(free_port)"
metrics_port="$(free_port)"
log="$(mktemp)"
"$server_binary" --grpc-url "http://127.0.0.1:$grpc_port" --metrics-url "http://127.0.0.1:$metrics_port" --warmup none >"$log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; rm -f "$log"' EXIT

if ! node scripts/wait-ready.mjs "http://127.0.0.1:$metrics_port/readyz" 120; then
  echo "xray-server did not become ready:" >&2
  cat "$log" >&2
  exit 1
fi
npm ci --no-audit --no-fund
# Bounded: a test that leaves a handle open must fail the run, not hang it.
XRAY_SERVER="http://127.0.0.1:$grpc_port" XRAY_METRICS="http://127.0.0.1:$metrics_port" timeout 600 npm test
