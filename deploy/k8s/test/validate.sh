#!/usr/bin/env bash
# Renders deploy/k8s (base and every overlay) with `kubectl kustomize` and checks every object against the
# Kubernetes API schemas pinned in package.json (kubernetes-models, plus the Prometheus Operator and KEDA CRDs),
# offline. Also checks that a manifest known to be invalid is rejected, so a broken validator cannot pass.
#   deploy/k8s/test/validate.sh [TAP_FILE]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=$(dirname "$here")
tap=${1:-/dev/null}
: >"$tap"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
n=0 pass=0 fail=0
result() {
  n=$((n + 1))
  if [ "$1" = 0 ]; then pass=$((pass + 1)); echo "ok $n - $2" | tee -a "$tap"
  else fail=$((fail + 1)); echo "not ok $n - $2" | tee -a "$tap"; fi
}

(cd "$here" && npm ci --no-audit --no-fund --loglevel=error >"$work/npm.log" 2>&1) || { cat "$work/npm.log"; exit 1; }
cd "$k8s"
for dir in base overlays/*; do
  name=${dir//\//-}
  if kubectl kustomize "$k8s/$dir" >"$work/$name.yaml" 2>"$work/$name.err"; then
    node "$here/validate.mjs" "$work/$name.yaml" && status=0 || status=$?
  else
    cat "$work/$name.err"; status=1
  fi
  result "$status" "deploy/k8s/$dir renders and every object matches the pinned schemas"
done
grep -q 'nvidia.com/gpu: "1"' "$work/overlays-gpu.yaml"; result $? "the GPU overlay requests nvidia.com/gpu"
grep -q 'kind: ScaledObject' "$work/overlays-keda.yaml" && ! grep -q 'kind: HorizontalPodAutoscaler' "$work/overlays-keda.yaml"
result $? "the KEDA overlay replaces the HPA with a ScaledObject"

cat >"$work/invalid.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: invalid}
spec:
  replicas: two
  selector: {matchLabels: {app: x}}
  template: {metadata: {labels: {app: x}}, spec: {containers: [{image: x}]}}
YAML
! node "$here/validate.mjs" "$work/invalid.yaml" >/dev/null
result $? "an invalid manifest is rejected"

printf '1..%d\n# pass %d\n# fail %d\n' "$n" "$pass" "$fail" | tee -a "$tap"
[ "$fail" -eq 0 ]
