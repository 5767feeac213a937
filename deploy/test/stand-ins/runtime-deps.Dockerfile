# Stand-in for mcr.microsoft.com/dotnet/runtime-deps:10.0, which cannot be pulled here: the same libraries
# (.NET's own dependencies) and the same unprivileged "app" user (APP_UID 1654), on Debian 12.
FROM xray-test/bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libc6 libgcc-s1 libicu72 libssl3 libstdc++6 tzdata zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1654 app && useradd --uid 1654 --gid app --create-home app
ENV APP_UID=1654
