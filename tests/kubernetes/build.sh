#!/usr/bin/env bash
# Build the Kubernetes the Kubernetes backend's tests run (tests/kubernetes_cluster.py), once.
#
# Kubernetes v1.20.2 from Debian bookworm's source package `kubernetes` (the newest release
# whose Debian source still ships vendor/; see the notes in shared/notes/KUBERNETES.md),
# with four changes this kind of machine needs (no CAP_SYS_RESOURCE, host sysctls left
# alone, a reflect2 that works with Go >= 1.18, no cloud metadata probes), plus a static
# `pause`. The binaries are kept in $JUPYTER_LOWCOST_KUBERNETES_CACHE (default
# /var/cache/jupyter-lowcost-kubernetes/v1.20.2); once there, this script only checks that
# the Debian packages the cluster runs with are installed (seconds). The source tree and
# the Go cache (3 GB) are deleted after a successful build.
#
# The Go build runs under `nice -n 19`: a test suite may be running on the same machine.
# Nothing here talks to anything but Debian's archive (apt) and loopback.
#
#     tests/kubernetes/build.sh            # build once (about 10 min cold), then nothing
#     tests/kubernetes/build.sh --print    # print the cache folder
set -euo pipefail

VERSION=v1.20.2
CACHE="${JUPYTER_LOWCOST_KUBERNETES_CACHE:-/var/cache/jupyter-lowcost-kubernetes/$VERSION}"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl pause)
# What the cluster runs with (etcd, dockerd + containerd + runc, openssl, unshare).
RUNTIME_PACKAGES=(etcd-server docker.io openssl util-linux)
# What the build needs on top.
BUILD_PACKAGES=(golang-go golang-github-modern-go-reflect2-dev rsync jq dpkg-dev gcc libc6-dev
    curl)
STAMP="$CACHE/.complete"

if [ "${1:-}" = "--print" ]; then
    echo "$CACHE"
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

log() { echo "[kubernetes/build.sh $(date +%H:%M:%S)] $*" >&2; }

missing_packages() {
    local package
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q "ok installed"; then
            echo "$package"
        fi
    done
}

apt_updated=""
apt_update() {
    if [ -z "$apt_updated" ]; then
        # Other (unreachable) repositories only warn; Debian's must answer.
        $SUDO apt-get update -q || log "apt-get update reported errors (continuing)"
        apt_updated=1
    fi
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt_update
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
            "${missing[@]}"
    fi
}

install_packages "${RUNTIME_PACKAGES[@]}"

complete() {
    [ -f "$STAMP" ] || return 1
    local binary
    for binary in "${BINARIES[@]}"; do
        [ -x "$CACHE/bin/$binary" ] || return 1
    done
}

if complete; then
    log "cached: $CACHE/bin ($(cat "$STAMP"))"
    exit 0
fi

$SUDO mkdir -p "$(dirname "$CACHE")"
$SUDO chown "$(id -u):$(id -g)" "$(dirname "$CACHE")"
# One build at a time (two CI jobs on one machine, or a second terminal).
exec 9>"$(dirname "$CACHE")/.build-$VERSION.lock"
if ! flock -n 9; then
    log "another build holds $(dirname "$CACHE")/.build-$VERSION.lock; waiting"
    flock 9
fi
if complete; then
    log "built meanwhile: $CACHE/bin"
    exit 0
fi

started=$(date +%s)
install_packages "${BUILD_PACKAGES[@]}"

WORK="${JUPYTER_LOWCOST_KUBERNETES_BUILD:-/var/tmp/jupyter-lowcost-kubernetes-build}"
# A tree fetched and changed by an interrupted run is built on (make and Go's cache resume
# where it stopped); anything else is started afresh.
PATCHED=.jupyter-lowcost-patched
TREE="$(find "$WORK" -mindepth 2 -maxdepth 2 -name "$PATCHED" -printf '%h\n' 2>/dev/null | head -n 1 || true)"
if [ -n "$TREE" ]; then
    log "resuming the build in $TREE"
else
    rm -rf "$WORK"
    mkdir -p "$WORK"
    cd "$WORK"

    # The source package (deb-src of bookworm, main), fetched into $WORK.
    SOURCES=/etc/apt/sources.list.d/jupyter-lowcost-kubernetes-src.sources
    if ! grep -qs "^Types:.*deb-src" "$SOURCES"; then
        log "adding $SOURCES"
        $SUDO tee "$SOURCES" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt_updated=""
    fi
    if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
        apt_update
    fi
    log "apt-get source kubernetes/bookworm"
    apt-get source -q kubernetes/bookworm >"$WORK/apt-source.log" 2>&1 || {
        cat "$WORK/apt-source.log" >&2
        exit 1
    }
    TREE="$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)"
    [ -n "$TREE" ] || { log "no source tree in $WORK"; exit 1; }
    SOURCE_VERSION="$(cd "$TREE" && dpkg-parsechangelog -S Version)"
    log "source: kubernetes $SOURCE_VERSION in $TREE"
    cd "$TREE"

    # 1. OOM scores: no CAP_SYS_RESOURCE here, a negative oom_score_adj makes runc fail
    #    ("write /proc/self/oom_score_adj: permission denied").
    sed -i -E 's/^(\s*KubeletOOMScoreAdj\s+int\s*=\s*)-?[0-9]+/\10/; s/^(\s*guaranteedOOMScoreAdj\s+int\s*=\s*)-?[0-9]+/\10/' \
        pkg/kubelet/qos/policy.go
    sed -i -E 's/^(\s*defaultSandboxOOMAdj\s+int\s*=\s*)-?[0-9]+/\10/' \
        pkg/kubelet/dockershim/docker_sandbox.go
    grep -Eq 'KubeletOOMScoreAdj\s+int\s*=\s*0$' pkg/kubelet/qos/policy.go
    grep -Eq 'guaranteedOOMScoreAdj\s+int\s*=\s*0$' pkg/kubelet/qos/policy.go
    grep -Eq 'defaultSandboxOOMAdj\s+int\s*=\s*0$' pkg/kubelet/dockershim/docker_sandbox.go

    # 2. Host sysctls (vm.overcommit_memory, kernel.panic...): warn, do not set them.
    sed -i -E 's/^(\s*b := )KernelTunableModify$/\1KernelTunableWarn/' pkg/kubelet/cm/container_manager_linux.go
    grep -Eq '^\s*b := KernelTunableWarn$' pkg/kubelet/cm/container_manager_linux.go

    # 3. reflect2 v1.0.1 corrupts memory with Go >= 1.18: Debian's v1.0.2 instead.
    rm -rf vendor/github.com/modern-go/reflect2
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
    rm -rf vendor/github.com/modern-go/reflect2/.git vendor/github.com/modern-go/reflect2/*_test.go
    # (The files only: vendor/modules.txt and go.mod keep naming v1.0.1, so they stay consistent.)
    grep -q 'go1.18' vendor/github.com/modern-go/reflect2/*.go

    # 4. No cloud metadata probes: the AWS credential provider connects to 169.254.169.254.
    sed -i '/"k8s.io\/kubernetes\/pkg\/credentialprovider\/aws"/d' cmd/kubelet/app/plugins.go
    if grep -q credentialprovider/aws cmd/kubelet/app/plugins.go; then exit 1; fi
    touch "$PATCHED"
fi

cd "$TREE"
SOURCE_VERSION="$(dpkg-parsechangelog -S Version)"

log "building ${BINARIES[*]} (nice -n 19)"
export CGO_ENABLED=0 GOPROXY=off GO111MODULE=on GOFLAGS=-mod=vendor GONOSUMDB='*' GOSUMDB=off
export GOPATH="$TREE/.gopath" GOCACHE="$TREE/.gocache" GOTOOLCHAIN=local
export KUBE_GIT_VERSION="$VERSION" KUBE_GIT_TREE_STATE=clean KUBE_BUILD_PLATFORMS=linux/amd64
nice -n 19 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kubectl" \
    >"$WORK/make.log" 2>&1 || {
    tail -n 60 "$WORK/make.log" >&2
    log "make failed; the whole log: $WORK/make.log"
    exit 1
}
nice -n 19 gcc -static -Os -DVERSION=v3.4.1-lowcost -o "$WORK/pause" build/pause/linux/pause.c

# The changes, as the cache's record (tests/test_kubernetes_cluster.py reads it).
{
    echo "# kubernetes $SOURCE_VERSION, as changed by tests/kubernetes/build.sh"
    grep -En 'OOMScoreAdj +int = |OOMAdj +int = ' pkg/kubelet/qos/policy.go \
        pkg/kubelet/dockershim/docker_sandbox.go
    grep -En '^\s*b := KernelTunable' pkg/kubelet/cm/container_manager_linux.go
    grep -En 'go:build|\+build' vendor/github.com/modern-go/reflect2/go_above_118.go
    grep -En 'credentialprovider' cmd/kubelet/app/plugins.go
} >"$WORK/source-changes.txt"

OUTPUT="$TREE/_output/local/bin/linux/amd64"
rm -rf "$CACHE.new"
mkdir -p "$CACHE.new/bin"
for binary in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
    cp "$OUTPUT/$binary" "$CACHE.new/bin/$binary"
done
cp "$WORK/pause" "$CACHE.new/bin/pause"
cp "$WORK/source-changes.txt" "$CACHE.new/source-changes.txt"
strip "$CACHE.new/bin/pause" || true
chmod 755 "$CACHE.new/bin/"*
"$CACHE.new/bin/kubectl" version --client --short 2>/dev/null | grep -q "$VERSION" ||
    log "warning: kubectl does not report $VERSION: $("$CACHE.new/bin/kubectl" version --client --short 2>&1)"
rm -rf "$CACHE"
mv "$CACHE.new" "$CACHE"
echo "kubernetes $SOURCE_VERSION ($VERSION), built $(date -u +%FT%TZ) in $(($(date +%s) - started)) s" \
    >"$STAMP"

cd /
rm -rf "$WORK"
log "done: $CACHE/bin ($(cat "$STAMP"))"
