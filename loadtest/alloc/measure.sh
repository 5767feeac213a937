#!/usr/bin/env bash
# Managed bytes the server allocates per request: the GC's total allocated bytes (from /metrics, the .NET runtime
# meter) before and after N requests from xray-loadtest, divided by N. Start-up and warm-up allocations are excluded.
#
# Usage: loadtest/alloc/measure.sh [SERVER_BINARY] [REQUESTS] [-- extra server arguments]
#   SERVER_BINARY defaults to the xray-server built in this repository; REQUESTS to 400 (float32 1x224x224 tensors,
#   8 callers). Prints "bytes/request" and exits 0; 1 when the server does not become ready.
set -euo pipefail
cd "$(dirname "$0")/../.."
server=${1:-server/XRay.Server/bin/Release/net10.0/linux-x64/xray-server}
requests=${2:-400}
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
loadtest=loadtest/XRay.LoadTest/bin/Release/net10.0/linux-x64/xray-loadtest

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc=$(free_port); metrics=$(free_port)
"$server" --grpc-url "http://127.0.0.1:$grpc" --metrics-url "http://127.0.0.1:$metrics" "$@" >/tmp/xray-alloc-server.$$.log 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$metrics/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "error: the server exited; see /tmp/xray-alloc-server.$$.log" >&2; exit 1; }
  sleep 0.5
done
curl -sf "http://127.0.0.1:$metrics/readyz" >/dev/null || { echo "error: the server did not become ready" >&2; exit 1; }

allocated() {
  curl -sf "http://127.0.0.1:$metrics/metrics" | awk '/^dotnet_gc_heap_total_allocated_bytes(_total)?[ {]/ { v = $NF } END { print v }'
}
# A few requests first: connection set-up and JIT are not per-request costs.
"$loadtest" run --no-progress -t "http://127.0.0.1:$grpc" -c 8 -n 40 --warmup 0 >/dev/null
before=$(allocated)
"$loadtest" run --no-progress -t "http://127.0.0.1:$grpc" -c 8 -n "$requests" --warmup 0 >/dev/null
after=$(allocated)
python3 -c "print(f'{($after - $before) / $requests:.0f} bytes/request ({$requests} requests; GC total allocated {$before:.0f} -> {$after:.0f})')"
