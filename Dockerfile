# XRay Serving container images (build with BuildKit: it builds only the stages the target needs).
#
#   CPU (default):  docker build -t xray-serving .
#                   docker run --rm --read-only --tmpfs /tmp -p 5051:5051 -p 9464:9464 xray-serving
#   GPU (CUDA):     docker build --target runtime-gpu -t xray-serving:gpu .
#                   docker run --rm --gpus all -p 5051:5051 -p 9464:9464 xray-serving:gpu
#
# The server and the `xray` CLI are published self-contained, so the CPU image needs only runtime-deps (the
# libraries .NET itself needs), not a .NET runtime. Both images run as the unprivileged user APP_UID, with jemalloc,
# the built-in default model (its ImageNet backbone ships under /app/pretrained), a gRPC health check, and
# nothing written outside /tmp: run them with a read-only root file system.
#
# Base images are arguments so that builds without access to the public registries can substitute local ones.
ARG SDK_IMAGE=mcr.microsoft.com/dotnet/sdk:10.0
ARG RUNTIME_DEPS_IMAGE=mcr.microsoft.com/dotnet/runtime-deps:10.0
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# Where /app comes from: "publish" compiles in the SDK image; "prebuilt" copies what
# `deploy/docker/publish.sh artifacts/docker/app` (and .../app-gpu -p:OnnxRuntimeGpu=true) produced on the host.
ARG APP_SOURCE=publish
# TorchSharp's native backend (cpu or cuda: see Directory.Build.props).
ARG TORCH_BACKEND=cpu

FROM ${SDK_IMAGE} AS source
WORKDIR /src
COPY Directory.Build.props Directory.Build.targets Directory.Packages.props ./
COPY build/ build/
COPY protos/ protos/
COPY model/ model/
COPY server/ server/
COPY clients/XRay.Client/ clients/XRay.Client/
COPY clients/XRay.Cli/ clients/XRay.Cli/
COPY deploy/docker/publish.sh deploy/docker/

FROM source AS publish
ARG TORCH_BACKEND
RUN deploy/docker/publish.sh /app -p:TorchBackend=${TORCH_BACKEND}

FROM source AS publish-gpu
ARG TORCH_BACKEND
# ONNX Runtime's CUDA execution provider (Microsoft.ML.OnnxRuntime.Gpu.Linux).
RUN deploy/docker/publish.sh /app -p:TorchBackend=${TORCH_BACKEND} -p:OnnxRuntimeGpu=true

FROM scratch AS prebuilt
COPY artifacts/docker/app/ /app/

FROM scratch AS prebuilt-gpu
COPY artifacts/docker/app-gpu/ /app/

FROM ${APP_SOURCE} AS app
FROM ${APP_SOURCE}-gpu AS app-gpu

# GPU target: --target runtime-gpu. Model:Device auto picks CUDA where the backend finds it.
FROM ${CUDA_IMAGE} AS runtime-gpu
ARG APP_UID=1654
# What runtime-deps adds (.NET's own dependencies; libssl is libssl3t64 on Ubuntu 24.04), jemalloc, and the same
# unprivileged user as the CPU image. No ICU: the server runs with invariant globalization here.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata libjemalloc2 \
    && (apt-get install -y --no-install-recommends libssl3t64 || apt-get install -y --no-install-recommends libssl3) \
    && rm -rf /var/lib/apt/lists/* \
    && (getent passwd ${APP_UID} >/dev/null || useradd --uid ${APP_UID} --user-group --create-home app)
COPY --from=app-gpu /app /app
WORKDIR /app
ENV Kestrel__Endpoints__Grpc__Url=http://0.0.0.0:5051 \
    Kestrel__Endpoints__Metrics__Url=http://0.0.0.0:9464 \
    Kestrel__Endpoints__Admin__Url=http://127.0.0.1:5052 \
    XRAY_SERVER=http://127.0.0.1:5051 \
    XRAY_ADMIN=http://127.0.0.1:5052 \
    DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1
EXPOSE 5051 9464
USER ${APP_UID}
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 CMD ["/app/xray", "health", "--timeout", "4"]
ENTRYPOINT ["/app/xray-server"]

# CPU target, the default (last stage).
FROM ${RUNTIME_DEPS_IMAGE} AS runtime
# The runtime-deps images' unprivileged "app" user.
ARG APP_UID=1654
# jemalloc: the server re-executes itself (execve, same PID) with it preloaded: much faster large tensors than glibc malloc.
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 && rm -rf /var/lib/apt/lists/*
# Owned by root and not writable by the server.
COPY --from=app /app /app
WORKDIR /app
# XRAY_SERVER is where the `xray` CLI (and so the health check) calls: keep it in step with the gRPC port. The Admin
# endpoint (model swaps) listens on the container's loopback only: `docker exec CONTAINER /app/xray load-model DIR`.
ENV Kestrel__Endpoints__Grpc__Url=http://0.0.0.0:5051 \
    Kestrel__Endpoints__Metrics__Url=http://0.0.0.0:9464 \
    Kestrel__Endpoints__Admin__Url=http://127.0.0.1:5052 \
    XRAY_SERVER=http://127.0.0.1:5051 \
    XRAY_ADMIN=http://127.0.0.1:5052
EXPOSE 5051 9464
USER ${APP_UID}
# SERVING once the model is loaded and warmed up (the default model takes 10-60 s on two cores).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["/app/xray", "health", "--timeout", "4"]
# Exec form: the server is PID 1 and receives SIGTERM itself, then drains its queue (Kestrel's shutdown timeout).
ENTRYPOINT ["/app/xray-server"]
