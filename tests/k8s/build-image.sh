#!/usr/bin/env bash
# Build (or reuse) the project's container image for the real-cluster tests.
#
# The tests run shoal on a real node, from the image the Dockerfile makes,
# and nothing may be pulled from a registry: so the base image is made here
# with debootstrap (Debian bookworm, minbase + python3), the Dockerfile is
# built on it with podman, and the result is saved as an OCI archive that
# `ctr -n k8s.io images import` puts on the node. pip inside the build reaches
# PyPI through this machine's TLS proxy: the host's CA bundle is handed to the
# build as the secret `pip-ca` (mounted only while pip runs, in no layer).
#
# Everything is cached outside the checkout, so a fresh clone reuses it:
#   - the base is rebuilt only when its recipe (below) changes;
#   - the image only when its inputs change (Dockerfile, .dockerignore,
#     pyproject.toml, README.md, src/, this script, the base), checked by a
#     hash kept as a label on the image; podman's layer cache then makes a
#     source-only change reuse the dependency layer;
#   - the archive only when the image changes.
#
# Output on stdout: the archive's path, nothing else (logs go to stderr).
# In $SHOAL_K8S_CACHE (default /var/cache/shoal-k8s):
#   images/shoal.tar      OCI archive of the image, named $IMAGE_REF
#   image-build/          the base's rootfs tarball, stamps, timings.log
set -euo pipefail

started=$(date +%s)
CACHE="${SHOAL_K8S_CACHE:-/var/cache/shoal-k8s}"
WORK="$CACHE/image-build"
ARCHIVE="$CACHE/images/shoal.tar"
SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SCRIPT")/../.." && pwd)"
PACKAGES=(podman runc debootstrap)

# The base: its recipe is everything that decides its content.
BASE_REF=localhost/shoal-base:bookworm
BASE_SUITE=bookworm
BASE_MIRROR="${SHOAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_INCLUDE=python3,python3-venv,ca-certificates
BASE_TRIM=(var/cache/apt var/lib/apt/lists usr/share/doc usr/share/man usr/share/info
           usr/share/locale var/log)
BASE_CONFIG=("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
             "ENV LANG=C.UTF-8" 'CMD ["/bin/bash"]')
BASE_RECIPE="$(printf '%s\n' 1 "$BASE_SUITE" minbase "$BASE_MIRROR" "$BASE_INCLUDE" \
               "${BASE_TRIM[@]}" "${BASE_CONFIG[@]}" | sha256sum | cut -c1-64)"

# The image: tagged as the manifests, the chart and the operator's default
# refer to it (ghcr.io/shoal-dev/shoal:VERSION), and under a local name.
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -n1)"
IMAGE_REF="${SHOAL_IMAGE:-ghcr.io/shoal-dev/shoal:$VERSION}"
LOCAL_REF="localhost/shoal:$VERSION"
PIP_CA=/etc/ssl/certs/ca-certificates.crt

log() { echo "build-image: $*" >&2; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }
fail() { log "FAILED after $(elapsed "$started"): $*"; exit 1; }
trap 'fail "line $LINENO: $BASH_COMMAND"' ERR

install_packages() {
    local missing
    mapfile -t missing < <(dpkg-query -W -f='${Status} ${Package}\n' "${PACKAGES[@]}" 2>&1 \
                           | grep -v '^install ok installed ' | grep -o '[^ ]*$')
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
}

# podman on this machine: root lacks CAP_SYS_RESOURCE, so the default ulimits
# cannot be applied, and crun fails on its hybrid cgroups. A drop-in of our
# own overrides just these two settings and leaves containers.conf alone.
configure_podman() {
    local conf=/etc/containers/containers.conf.d/50-shoal.conf
    local want='[containers]
default_ulimits = []

[engine]
runtime = "runc"'
    if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
        log "writing $conf"
        mkdir -p "$(dirname "$conf")"
        printf '%s\n' "$want" > "$conf"
    fi
}

image_label() {  # image label -> the label's value, empty if no such image
    podman image inspect --format "{{ index .Labels \"$2\" }}" "$1" 2>/dev/null || true
}

make_base() {
    [ "$(image_label "$BASE_REF" shoal.base.recipe)" = "$BASE_RECIPE" ] && return 0
    local tarball="$WORK/base-$BASE_SUITE.tar" t0
    t0=$(date +%s)
    if [ ! -s "$tarball" ] || [ "$(cat "$tarball.stamp" 2>/dev/null)" != "$BASE_RECIPE" ]; then
        log "debootstrap $BASE_SUITE from $BASE_MIRROR"
        local rootfs="$WORK/rootfs" d
        rm -rf "$rootfs"
        debootstrap --variant=minbase --include="$BASE_INCLUDE" "$BASE_SUITE" "$rootfs" \
            "$BASE_MIRROR" > "$WORK/debootstrap.log" 2>&1 \
            || fail "debootstrap failed, see $WORK/debootstrap.log"
        for d in "${BASE_TRIM[@]}"; do
            find "$rootfs/$d" -mindepth 1 -delete
        done
        tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
        rm -rf "$rootfs"
        mv "$tarball.tmp" "$tarball"
        echo "$BASE_RECIPE" > "$tarball.stamp"
    fi
    local changes=() c
    for c in "${BASE_CONFIG[@]}" "LABEL shoal.base.recipe=$BASE_RECIPE"; do
        changes+=(--change "$c")
    done
    podman import --quiet "${changes[@]}" "$tarball" "$BASE_REF" >/dev/null
    log "base $BASE_REF ready ($(elapsed "$t0"))"
}

inputs_hash() {
    (
        cd "$ROOT"
        find Dockerfile .dockerignore pyproject.toml README.md src -type f \
            ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum
        sha256sum "$SCRIPT" | cut -d' ' -f1
        podman image inspect --format '{{.Id}}' "$BASE_REF"
    ) | sha256sum | cut -c1-64
}

build_image() {
    local inputs t0
    inputs="$(inputs_hash)"
    if [ "$(image_label "$IMAGE_REF" shoal.inputs)" = "$inputs" ]; then
        podman tag "$IMAGE_REF" "$LOCAL_REF"
        return 0
    fi
    t0=$(date +%s)
    log "building $IMAGE_REF from $ROOT/Dockerfile"
    # --pull=never: the base is local and nothing else may come from a
    # registry. Host networking: pip needs the proxy, and no podman network
    # (bridge, iptables rules) is made on a machine that also runs a node.
    podman build --pull=never --network host --layers \
        --build-arg "BASE=$BASE_REF" \
        --secret "id=pip-ca,src=$PIP_CA" \
        --label "shoal.inputs=$inputs" \
        --tag "$IMAGE_REF" --tag "$LOCAL_REF" \
        --file "$ROOT/Dockerfile" "$ROOT" > "$WORK/build.log" 2>&1 \
        || { tail -n 30 "$WORK/build.log" >&2; fail "podman build failed, see $WORK/build.log"; }
    log "built $IMAGE_REF ($(elapsed "$t0"))"
}

save_archive() {
    local id t0
    id="$(podman image inspect --format '{{.Id}}' "$IMAGE_REF")"
    [ -s "$ARCHIVE" ] && [ "$(cat "$ARCHIVE.stamp" 2>/dev/null)" = "$id" ] && return 0
    t0=$(date +%s)
    rm -f "$ARCHIVE.tmp"
    podman save --quiet --format oci-archive --output "$ARCHIVE.tmp" "$IMAGE_REF" >/dev/null
    mv "$ARCHIVE.tmp" "$ARCHIVE"
    echo "$id" > "$ARCHIVE.stamp"
    log "saved $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1), $(elapsed "$t0"))"
}

mkdir -p "$WORK" "$CACHE/images"
# One build at a time: the tests of two sessions may ask at once.
exec 9>"$WORK/lock"
flock 9
install_packages
configure_podman
make_base
build_image
save_archive
log "$IMAGE_REF ($LOCAL_REF) in $ARCHIVE, $(elapsed "$started")"
echo "$(date -u +%FT%TZ) $(elapsed "$started") $IMAGE_REF" >> "$WORK/timings.log"
echo "$ARCHIVE"
