#!/usr/bin/env bash
# Builds the container image from the Dockerfile and checks it end to end on a private Docker engine (started
# here, stopped at the end): a real chest X-ray classified through it with the xray CLI, non-root, jemalloc,
# read-only root file system, the gRPC health check, SIGTERM drains in-flight requests and exits 0; then the
# monitoring wiring of deploy/compose.yaml (Prometheus with the shipped config and alert rules scraping the
# server container; Grafana's provisioning checked against what compose mounts).
#
# The official base images cannot be pulled here, so the test builds local stand-ins (deploy/test/stand-ins/,
# Debian 12 from debootstrap) and passes them as the Dockerfile's base-image arguments; the app is published on
# the host with the same script the Dockerfile's SDK stage runs (deploy/docker/publish.sh) and copied in through
# the "prebuilt" stage. Needs root (installs docker.io and debootstrap when missing).
#
#   deploy/test/container.sh [TAP_FILE]     results as TAP ("# pass N" / "# fail N"); exit 1 on any failure
#   XRAY_CONTAINER_TEST_GPU=1 ...            also builds the runtime-gpu target (-p:OnnxRuntimeGpu=true) on a stand-in
#                                            CUDA base and checks that it serves as a non-root user (on the CPU here)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
tap=${1:-$repo/artifacts/docker/container-test.tap}
mkdir -p "$(dirname "$tap")"
: >"$tap"
work=$(mktemp -d /var/tmp/xray-container-test.XXXXXX)
# shellcheck source=deploy/test/engine.sh
source "$repo/deploy/test/engine.sh"
server=xray-test-server
prometheus=xray-test-prometheus
started=$SECONDS

cleanup() {
  stop_engine
  rm -rf "$work" || echo "warning: could not remove $work"
}
trap cleanup EXIT

step() { echo "[$((SECONDS - started)) s] $*"; }

install_engine
step "starting a private Docker engine"
start_engine
step "base image stand-ins"
import_base_image
build_stand_in runtime-deps
build_stand_in prometheus

step "publishing on the host (deploy/docker/publish.sh)"
rm -rf "$repo/artifacts/docker/app"
"$repo/deploy/docker/publish.sh" "$repo/artifacts/docker/app" --artifacts-path "$repo/artifacts/docker/build" \
  -v quiet -nologo >"$work/publish.log" 2>&1 || { tail -30 "$work/publish.log"; exit 1; }
step "docker build"
"$DOCKER" build -q --network host -t xray-serving:test \
  --build-arg RUNTIME_DEPS_IMAGE=xray-test/runtime-deps --build-arg APP_SOURCE=prebuilt "$repo" >/dev/null
image_bytes=$("$DOCKER" image inspect -f '{{.Size}}' xray-serving:test)
base_bytes=$("$DOCKER" image inspect -f '{{.Size}}' xray-test/runtime-deps)
step "image xray-serving:test: $((image_bytes / 1024 / 1024)) MiB ($((base_bytes / 1024 / 1024)) MiB of it the runtime-deps stand-in)"

grpc_port=$(free_port)
metrics_port=$(free_port)
admin_port=$(free_port)
grpc=http://127.0.0.1:$grpc_port
xray() { "$repo/artifacts/docker/app/xray" --server "$grpc" "$@"; }

# Read-only root file system with a writable /tmp, as deploy/compose.yaml and the Kubernetes manifests run it.
"$DOCKER" run -d --name "$server" --network host --read-only --tmpfs /tmp:rw,size=64m --stop-timeout 60 \
  -e Kestrel__Endpoints__Grpc__Url="$grpc" -e Kestrel__Endpoints__Metrics__Url="http://127.0.0.1:$metrics_port" \
  -e Kestrel__Endpoints__Admin__Url="http://127.0.0.1:$admin_port" -e XRAY_ADMIN="http://127.0.0.1:$admin_port" \
  -e XRAY_SERVER="$grpc" xray-serving:test >/dev/null

wait_healthy() {
  local status
  for _ in $(seq 1 300); do
    status=$("$DOCKER" inspect -f '{{.State.Health.Status}} {{.State.Running}}' "$server")
    case $status in
      "healthy true") return 0 ;;
      *false) echo "the server container stopped:"; "$DOCKER" logs --tail 30 "$server"; return 1 ;;
    esac
    sleep 1
  done
  echo "not healthy after 300 s ($status)"; "$DOCKER" logs --tail 30 "$server"; return 1
}
step "waiting for the image's HEALTHCHECK (xray health) to report healthy"
check "HEALTHCHECK reports healthy once the model is warmed up" wait_healthy
step "server healthy"

pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$server")
runs_unprivileged() {
  local uid
  uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
  echo "server process uid $uid"
  [ "$uid" != 0 ]
}
check "the server runs as a non-root user" runs_unprivileged
check "the server runs on jemalloc (re-executed in place, still the container's PID 1)" \
  grep -q libjemalloc "/proc/$pid/maps"
check "the root file system is read-only" \
  bash -c "! '$DOCKER' exec '$server' sh -c 'touch /app/probe' 2>/dev/null"

data=$(find_shared_data)
if [ -n "$data" ] && [ -d "$data/nih-cxr14-sample/images" ]; then
  xray_image=$(find "$data/nih-cxr14-sample/images" -name '*.png' | sort | sed -n 1p)  # sed reads it all: head would end the pipe early (SIGPIPE under pipefail)
else
  xray_image="$work/generated.png"
  /usr/bin/python3 - "$xray_image" <<'EOF'
import struct, sys, zlib
w = h = 256  # an 8-bit grayscale gradient PNG with a bright disc: stands in when shared/data is absent
rows = b"".join(b"\x00" + bytes(255 if (x - 128) ** 2 + (y - 128) ** 2 < 3600 else (x + y) // 2 for x in range(w)) for y in range(h))
def chunk(kind, body): return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                              + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
EOF
fi
classifies() {
  xray --json classify "$xray_image" >"$work/classify.json" || return 1
  /usr/bin/python3 - "$work/classify.json" <<'EOF'
import json, sys
entry = json.load(open(sys.argv[1]))[0]
p = entry["result"]["probabilities"]
print(f"{entry['path']}: {len(p)} findings, top {max(p, key=p.get)} {max(p.values()):.3f}")
assert len(p) >= 2 and all(0.0 <= v <= 1.0 for v in p.values())
EOF
}
check "classifies a chest X-ray ($(basename "$xray_image")) through the container with the xray CLI" classifies
# grep reads everything (no -q): curl must not see its pipe close early.
serves_metrics() { curl -fsS "http://127.0.0.1:$metrics_port/metrics" | grep '^xray_server_model_ready' >/dev/null; }
check "serves /metrics on the metrics port" serves_metrics

# A model swap through the Admin endpoint, as an operator does it: the CLI inside the container, the built-in model.
swaps_model() {
  "$DOCKER" exec "$server" /app/xray load-model "" | tee "$work/swap.txt" && grep -q '^serving ' "$work/swap.txt" && classifies
}
check "swaps the model while serving (docker exec ... xray load-model), then classifies" swaps_model

# --- Monitoring: Prometheus with the compose file's config and alert rules, scraping the server container.
# Compose's network gives the server the name "server"; with host networking here it is 127.0.0.1.
step "Prometheus (compose config, stand-in image) scraping the server container"
prometheus_port=$(free_port)
mkdir -p "$work/prometheus"
sed "s/server:9464/127.0.0.1:$metrics_port/; s/scrape_interval: 15s/scrape_interval: 1s/; s/evaluation_interval: 15s/evaluation_interval: 1s/" \
  "$repo/deploy/prometheus/prometheus.yml" >"$work/prometheus/prometheus.yml"
cp "$repo/deploy/prometheus/alerts.yml" "$work/prometheus/alerts.yml"
chmod -R a+rX "$work/prometheus"
"$DOCKER" run -d --name "$prometheus" --network host --read-only \
  -v "$work/prometheus:/etc/prometheus:ro" --tmpfs /prometheus:rw,uid=65534 xray-test/prometheus \
  --config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/prometheus \
  --web.listen-address="127.0.0.1:$prometheus_port" >/dev/null
scrapes_server() {
  local query="http://127.0.0.1:$prometheus_port/api/v1/query?query=xray_server_model_ready%7Bjob%3D%22xray-serving%22%7D"
  for _ in $(seq 1 60); do
    curl -fsS "$query" 2>/dev/null | grep '"value":\[[0-9.]*,"1"\]' >/dev/null && return 0
    sleep 1
  done
  echo "Prometheus never saw xray_server_model_ready == 1:"; "$DOCKER" logs --tail 20 "$prometheus"; return 1
}
check "Prometheus scrapes the server (job xray-serving, model ready = 1)" scrapes_server
loads_alerts() {
  local groups
  groups=$(curl -fsS "http://127.0.0.1:$prometheus_port/api/v1/rules" | /usr/bin/python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
print(len(rules)); assert all(r["health"] == "ok" for r in rules if "health" in r)')
  echo "Prometheus loaded $groups alert rules"
  [ "${groups:-0}" -gt 0 ]
}
check "Prometheus loads the alert rules the compose file mounts" loads_alerts
check "deploy/compose.yaml is a valid compose file (docker-compose config)" \
  docker-compose -f "$repo/deploy/compose.yaml" config -q
check "Grafana provisioning matches deploy/compose.yaml (data source, dashboard path, scrape job)" \
  /usr/bin/python3 "$repo/deploy/test/check_compose.py" "$repo/deploy/compose.yaml"
"$DOCKER" rm -f "$prometheus" >/dev/null

# --- SIGTERM while requests are in flight: every one completes, the server exits 0.
step "SIGTERM with requests in flight"
# 16 files a client: xray classify sends one request per file, 16 at once, so each client's images are all in flight together.
images=()
for _ in $(seq 1 16); do images+=("$xray_image"); done
clients=()
for i in 1 2 3 4; do
  xray --json classify "${images[@]}" >"$work/drain-$i.json" 2>"$work/drain-$i.err" &
  clients+=($!)
done
in_flight() {
  for _ in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:$metrics_port/metrics" | grep -E '^xray_server_queue_depth(\{[^}]*\})? [1-9]' >/dev/null && return 0
    sleep 0.05
  done
  return 1
}
in_flight || echo "note: no queued images seen before SIGTERM"
"$DOCKER" kill --signal TERM "$server" >/dev/null
drained=0
for i in "${!clients[@]}"; do
  if wait "${clients[$i]}"; then drained=$((drained + 1)); else cat "$work/drain-$((i + 1)).err"; fi
done
exit_code=$("$DOCKER" wait "$server")
echo "requests completed after SIGTERM: $drained/4; server exit code $exit_code"
check "every request in flight at SIGTERM completes" test "$drained" = 4
check "SIGTERM stops the server with exit code 0" test "$exit_code" = 0
check "the server logs its drain" bash -c "'$DOCKER' logs '$server' 2>&1 | grep -q 'Shutting down: no new requests'"

if [ "${XRAY_CONTAINER_TEST_GPU:-0}" = 1 ]; then
  step "GPU target: publishing with -p:OnnxRuntimeGpu=true, docker build --target runtime-gpu"
  build_stand_in cuda
  rm -rf "$repo/artifacts/docker/app-gpu"
  "$repo/deploy/docker/publish.sh" "$repo/artifacts/docker/app-gpu" --artifacts-path "$repo/artifacts/docker/build-gpu" \
    -p:OnnxRuntimeGpu=true -v quiet -nologo >"$work/publish-gpu.log" 2>&1 || { tail -30 "$work/publish-gpu.log"; exit 1; }
  "$DOCKER" build -q --network host --target runtime-gpu -t xray-serving:test-gpu \
    --build-arg CUDA_IMAGE=xray-test/cuda --build-arg APP_SOURCE=prebuilt "$repo" >/dev/null
  step "GPU image: $(( $("$DOCKER" image inspect -f '{{.Size}}' xray-serving:test-gpu) / 1024 / 1024 )) MiB"
  server=xray-test-server-gpu
  grpc_port=$(free_port); grpc=http://127.0.0.1:$grpc_port
  "$DOCKER" run -d --name "$server" --network host --read-only --tmpfs /tmp:rw,size=64m \
    -e Kestrel__Endpoints__Grpc__Url="$grpc" -e Kestrel__Endpoints__Metrics__Url="http://127.0.0.1:$(free_port)" \
    -e Kestrel__Endpoints__Admin__Url="http://127.0.0.1:$(free_port)" -e XRAY_SERVER="$grpc" xray-serving:test-gpu >/dev/null
  check "GPU image: healthy" wait_healthy
  pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$server")
  check "GPU image: the server runs as a non-root user" runs_unprivileged
  check "GPU image: classifies a chest X-ray" classifies
  "$DOCKER" kill --signal TERM "$server" >/dev/null
  check "GPU image: SIGTERM stops the server with exit code 0" test "$("$DOCKER" wait "$server")" = 0
fi

step "done in $((SECONDS - started)) s; image $((image_bytes / 1024 / 1024)) MiB"
tap_summary
[ "$tap_fail" -eq 0 ]
