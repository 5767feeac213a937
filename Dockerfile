# XRay Serving container.
#   CPU (default):  docker build -t xray-serving .
#   GPU (CUDA):     docker build --target runtime-gpu --build-arg TORCH_BACKEND=cuda -t xray-serving:gpu .
#                   docker run --gpus all -p 5051:5051 -p 9464:9464 xray-serving:gpu --device cuda
ARG TORCH_BACKEND=cpu

FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
ARG TORCH_BACKEND
WORKDIR /src
COPY Directory.Build.props Directory.Build.targets Directory.Packages.props Serving.sln ./
COPY build/ build/
COPY protos/ protos/
COPY model/ model/
COPY server/ server/
RUN dotnet publish server/XRay.Server/XRay.Server.csproj -c Release -o /app -p:TorchBackend=${TORCH_BACKEND}

FROM mcr.microsoft.com/dotnet/aspnet:10.0 AS runtime
# jemalloc: the server re-executes itself with it preloaded (much faster large tensors than glibc malloc).
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app .
ENV Kestrel__Endpoints__Grpc__Url=http://0.0.0.0:5051 \
    Kestrel__Endpoints__Metrics__Url=http://0.0.0.0:9464
EXPOSE 5051 9464
USER $APP_UID
ENTRYPOINT ["dotnet", "xray-server.dll"]

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS runtime-gpu
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 ca-certificates libicu74 && rm -rf /var/lib/apt/lists/*
COPY --from=mcr.microsoft.com/dotnet/aspnet:10.0 /usr/share/dotnet /usr/share/dotnet
RUN ln -s /usr/share/dotnet/dotnet /usr/bin/dotnet
WORKDIR /app
COPY --from=build /app .
ENV Kestrel__Endpoints__Grpc__Url=http://0.0.0.0:5051 \
    Kestrel__Endpoints__Metrics__Url=http://0.0.0.0:9464
EXPOSE 5051 9464
ENTRYPOINT ["dotnet", "xray-server.dll"]
