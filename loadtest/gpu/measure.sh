#!/usr/bin/env bash
# Raw vs served throughput on a GPU machine, ONNX Runtime's CUDA execution provider:
#   (a) the raw model per batch size (xray-train raw-benchmark --runtime onnxruntime --device cuda),
#   (b) the server unbatched and (c) batched, on the same GPU, same load; ratios (xray-loadtest bench).
#
# Usage: loadtest/gpu/measure.sh [OUT_DIR] [--no-build]
#   Builds with -p:OnnxRuntimeGpu=true (Microsoft.ML.OnnxRuntime.Gpu.Linux) unless --no-build: on a machine that
#   cannot reach NuGet, build on one that can and bring the build outputs along. Needs the CUDA 12 runtime and
#   cuDNN 9 libraries that ONNX Runtime's CUDA provider loads (the NuGet package does not ship them).
# Exit codes: 0 measured; 2 no GPU / no CUDA libraries (nothing measured); other: the build or bench failed.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=loadtest/results/gpu
build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    *) out=$arg ;;
  esac
done

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
  echo "error: no NVIDIA GPU visible (nvidia-smi failed)" >&2
  exit 2
fi
for lib in libcudart.so.12 libcublas.so.12 libcudnn.so.9; do
  if ! ldconfig -p | grep -q "$lib"; then
    echo "error: $lib not found (ldconfig -p): ONNX Runtime's CUDA provider needs the CUDA 12 runtime, cuBLAS and cuDNN 9" >&2
    exit 2
  fi
done

if [ "$build" = 1 ]; then
  for project in model/XRay.Train server/XRay.Server loadtest/XRay.LoadTest; do
    dotnet build "$project" -c Release -p:OnnxRuntimeGpu=true
  done
fi

bin=loadtest/XRay.LoadTest/bin/Release/net10.0/linux-x64
# GPU batches are cheap per image: larger batches and more callers than on CPU; the CPU run of the same build
# (fp32, ONNX Runtime) comes second for reference.
"$bin/xray-loadtest" bench --no-progress --device cuda --compare onnxruntime/fp32 \
  --raw-batch-sizes 1,2,4,8,16,32,64 --max-batch-size 64 --concurrency 128 --duration 20 --warmup 5 -o "$out/cuda"
"$bin/xray-loadtest" bench --no-progress --device cpu --compare onnxruntime/fp32 --duration 10 --warmup 3 -o "$out/cpu"
echo "reports: $out/cuda/report.md, $out/cpu/report.md"
