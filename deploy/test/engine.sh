# Sourced by the deploy tests: a private Docker engine (own socket, data and exec roots under $work) and
# local stand-ins for the public base images, which cannot be pulled here.
# Needs: $work (an empty scratch folder, removed by the caller), $repo.

DOCKER=${DOCKER:-/usr/bin/docker}  # docker.io's client: it builds with BuildKit without the buildx plug-in
export DOCKER_HOST="unix://$work/docker.sock"
export DOCKER_BUILDKIT=1
cache=${XRAY_TEST_CACHE:-/var/tmp/xray-test-cache}
dockerd_pid=""

install_engine() {
  local missing=()
  [ -x /usr/bin/docker ] && command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v curl >/dev/null || missing+=(curl)
  /usr/bin/python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

start_engine() {
  # vfs and no networking of its own: these machines have neither overlayfs nor iptables; containers use --network host.
  dockerd --storage-driver=vfs --iptables=false --bridge=none -H "$DOCKER_HOST" \
    --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 120); do
    "$DOCKER" version >/dev/null 2>&1 && return 0
    kill -0 "$dockerd_pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "dockerd did not start:"; tail -20 "$work/dockerd.log"
  return 1
}

stop_engine() {
  [ -n "$dockerd_pid" ] || return 0
  local ids
  ids=$("$DOCKER" ps -aq 2>/dev/null || true)
  [ -z "$ids" ] || "$DOCKER" rm -f $ids >/dev/null 2>&1 || true
  kill -TERM "$dockerd_pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$dockerd_pid" 2>/dev/null || true
  wait "$dockerd_pid" 2>/dev/null || true
  dockerd_pid=""
  # dockerd leaves its network namespace (exec-root/netns/default) mounted: unmount whatever remains under $work.
  awk -v root="$work/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mount; do
    umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || true
  done
}

# xray-test/bookworm: Debian 12 minbase from debootstrap (cached as a tarball between runs on one machine).
import_base_image() {
  local tarball="$cache/bookworm-minbase.tar"
  if [ ! -s "$tarball" ]; then
    mkdir -p "$cache"
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log"; return 1; }
    tar -C "$work/rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$work/rootfs"
  fi
  "$DOCKER" import "$tarball" xray-test/bookworm >/dev/null
}

# $1 = stand-in name under deploy/test/stand-ins (<name>.Dockerfile); tagged xray-test/<name>.
build_stand_in() {
  "$DOCKER" build -q --network host -t "xray-test/$1" -f "$repo/deploy/test/stand-ins/$1.Dockerfile" \
    "$repo/deploy/test/stand-ins" >/dev/null
}

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The first directory named shared/data found walking up from $repo (tests' rule for real data), or nothing.
find_shared_data() {
  local dir=$repo
  while [ "$dir" != "/" ]; do
    [ -d "$dir/shared/data" ] && { echo "$dir/shared/data"; return 0; }
    dir=$(dirname "$dir")
  done
}

# TAP results: check NAME COMMAND... runs COMMAND, records ok/not ok.
tap_n=0 tap_pass=0 tap_fail=0
check() {
  local name=$1
  shift
  tap_n=$((tap_n + 1))
  if "$@"; then
    tap_pass=$((tap_pass + 1)); echo "ok $tap_n - $name" | tee -a "$tap"
  else
    tap_fail=$((tap_fail + 1)); echo "not ok $tap_n - $name" | tee -a "$tap"
  fi
}
tap_summary() {
  printf '1..%d\n# pass %d\n# fail %d\n' "$tap_n" "$tap_pass" "$tap_fail" | tee -a "$tap"
}
