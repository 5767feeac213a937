#!/bin/sh
# Publishes the server and the xray CLI (used by the image's health check) self-contained for linux-x64 into
# one folder: a runtime-deps base image then needs no .NET runtime. Extra arguments go to both publishes
# (e.g. -p:OnnxRuntimeGpu=true). Used by the Dockerfile's build stage and, on the host, by the container test.
#   deploy/docker/publish.sh OUT_DIR [dotnet publish options...]
set -eu
out=$1
shift
cd "$(dirname "$0")/../.."
for project in server/XRay.Server/XRay.Server.csproj clients/XRay.Cli/XRay.Cli.csproj; do
  dotnet publish "$project" -c Release -r linux-x64 --self-contained -p:SelfContained=true -o "$out" "$@"
done
