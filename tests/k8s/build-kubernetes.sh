#!/usr/bin/env bash
# Build (or reuse) a single-node Kubernetes 1.20 from Debian's sources.
#
# The real-cluster test tier needs kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet and kube-proxy; Debian bookworm ships none of them as
# binaries, only the 1.20 source package (newer ones are client-only). This
# script installs the Debian packages the node needs, builds the components
# from that source with Debian's Go, and makes a pause image from the same
# tree. Everything lands in a cache outside any checkout, so a fresh clone on
# the same machine reuses it: a warm run only checks a stamp and takes seconds.
#
# Output (in $SHOAL_K8S_CACHE, default /var/cache/shoal-k8s):
#   bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,pause,agnhost}
#   images/pause.tar      the sandbox image, an OCI archive for `ctr -n k8s.io images import`
#   images/agnhost.tar    Kubernetes' own e2e test server (HTTP, dialing out), likewise
#   stamp                 hash of this script, written last
set -euo pipefail

started=$(date +%s)
CACHE="${SHOAL_K8S_CACHE:-/var/cache/shoal-k8s}"
SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"
STAMP_WANTED="$(sha256sum "$SCRIPT" | cut -d' ' -f1)"
K8S_VERSION=v1.20.2
PAUSE_IMAGE=registry.k8s.io/pause:shoal
AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:shoal
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
PACKAGES=(etcd-server containerd runc containernetworking-plugins golang-go rsync
          gcc libc6-dev make dpkg-dev iptables conntrack iproute2 util-linux
          golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)

log() { echo "build-kubernetes: $*" >&2; }
elapsed() { echo "$(( $(date +%s) - started ))s"; }
fail() { log "FAILED after $(elapsed): $*"; exit 1; }
trap 'fail "line $LINENO: $BASH_COMMAND"' ERR

all_built() {
    local c
    for c in "${COMPONENTS[@]}" pause agnhost; do [ -x "$CACHE/bin/$c" ] || return 1; done
    [ -s "$CACHE/images/pause.tar" ] && [ -s "$CACHE/images/agnhost.tar" ]
}

packages_missing() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    echo "${missing[@]}"
}

install_packages() {
    local missing
    missing="$(packages_missing)"
    [ -z "$missing" ] && return 0
    log "installing Debian packages: $missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # The packaged services must not run: the tests start their own instances.
    if [ -d /run/systemd/system ]; then
        systemctl disable --now etcd containerd >/dev/null 2>&1 || true
    fi
}

if [ -f "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$STAMP_WANTED" ] && all_built \
        && [ -z "$(packages_missing)" ]; then
    log "cached in $CACHE ($K8S_VERSION), nothing to do ($(elapsed))"
    exit 0
fi

mkdir -p "$CACHE"/{bin,images,gocache,src}
install_packages

# --- source -----------------------------------------------------------------
SRC_PARENT="$CACHE/gopath/src/k8s.io"
SRC="$SRC_PARENT/kubernetes"
if [ ! -f "$SRC/.shoal-prepared" ]; then
    if [ ! -f /etc/apt/sources.list.d/shoal-deb-src.sources ]; then
        log "enabling deb-src for bookworm"
        cat > /etc/apt/sources.list.d/shoal-deb-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt-get update -qq
    fi
    if ! ls "$CACHE"/src/kubernetes_*.dsc >/dev/null 2>&1; then
        log "downloading the kubernetes source package"
        (cd "$CACHE/src" && apt-get source --download-only -qq kubernetes >/dev/null)
    fi
    log "unpacking the source"
    rm -rf "$CACHE/src/unpacked" "$SRC"
    dsc="$(ls "$CACHE"/src/kubernetes_*.dsc | head -n1)"
    dpkg-source --no-check -x "$dsc" "$CACHE/src/unpacked" >/dev/null
    mkdir -p "$SRC_PARENT"
    mv "$CACHE/src/unpacked" "$SRC"
    # Go 1.19 crashes the vendored reflect2 1.0.1 (fatal error: fault in
    # mapiterinit on the first custom resource): use Debian's newer sources.
    for pair in "github.com/modern-go/reflect2" "github.com/json-iterator/go"; do
        [ -d "/usr/share/gocode/src/$pair" ] || fail "missing /usr/share/gocode/src/$pair"
        rm -rf "$SRC/vendor/$pair"
        mkdir -p "$SRC/vendor/$pair"
        cp -r "/usr/share/gocode/src/$pair/." "$SRC/vendor/$pair/"
        find "$SRC/vendor/$pair" -name '*_test.go' -delete
    done
    touch "$SRC/.shoal-prepared"
fi

# Go >= 1.19 makes reflect.DeepEqual(reflect.Zero(T), reflect.ValueOf(v)) true
# for every zero value, so the vendored OpenAPI validators took "" for null and
# the API server refused every empty string in a custom resource ("Invalid
# value: null: must be of type string"). Upstream (built with Go 1.15) only ever
# matched nil there: say so. Idempotent.
for validator in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go \
                 vendor/github.com/go-openapi/validate/type.go; do
    sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' \
        "$SRC/$validator"
    grep -q 'reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data))' "$SRC/$validator" \
        && fail "could not patch $validator"
done

# --- build ------------------------------------------------------------------
export GOPATH="$CACHE/gopath" GO111MODULE=off GOCACHE="$CACHE/gocache" GOFLAGS=""
cd "$SRC"
if [ ! -f "$SRC/.shoal-generated" ]; then
    log "make generated_files (cold: several minutes)"
    make generated_files >"$CACHE/generated_files.log" 2>&1 \
        || { tail -n 40 "$CACHE/generated_files.log" >&2; fail "make generated_files"; }
    touch "$SRC/.shoal-generated"
fi

# The version both of --version (component-base) and of GET /version (client-go's
# copy, which Helm's kubeVersion check and kubectl's skew warning read).
LDFLAGS="-s -w"
for VPKG in k8s.io/kubernetes/vendor/k8s.io/component-base/version \
            k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    LDFLAGS="$LDFLAGS -X $VPKG.gitVersion=$K8S_VERSION -X $VPKG.gitMajor=1 -X $VPKG.gitMinor=20"
    LDFLAGS="$LDFLAGS -X $VPKG.gitTreeState=clean -X $VPKG.buildDate=1970-01-01T00:00:00Z"
    LDFLAGS="$LDFLAGS -X $VPKG.gitCommit=faecb196815e248d3ecfb03c680a4507229c2a56"
done
for c in "${COMPONENTS[@]}"; do
    t0=$(date +%s)
    log "go build $c"
    go build -o "$CACHE/bin/$c.new" -ldflags "$LDFLAGS" "./cmd/$c" \
        || fail "go build $c"
    mv "$CACHE/bin/$c.new" "$CACHE/bin/$c"
    log "built $c in $(( $(date +%s) - t0 ))s"
done

# The tests use the machine's kubectl; without one, the same tree's (v1.20).
if ! command -v kubectl >/dev/null 2>&1; then
    log "no kubectl on PATH: go build kubectl"
    go build -o "$CACHE/bin/kubectl" -ldflags "$LDFLAGS" ./cmd/kubectl || fail "go build kubectl"
fi

# --- images -----------------------------------------------------------------
log "building the pause and agnhost binaries"
gcc -Os -static -o "$CACHE/bin/pause" "$SRC/build/pause/linux/pause.c" \
    -DVERSION=shoal
strip "$CACHE/bin/pause" 2>/dev/null || true
CGO_ENABLED=0 go build -o "$CACHE/bin/agnhost.new" -ldflags "-s -w" ./test/images/agnhost \
    || fail "go build agnhost"
mv "$CACHE/bin/agnhost.new" "$CACHE/bin/agnhost"

# oci_archive BINARY OUT REF: a one-layer OCI image archive holding /BINARY's
# name as its entrypoint (no registry, no image tools).
oci_archive() {
python3 - "$@" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile

binary, out, ref = sys.argv[1:4]
entry = os.path.basename(binary)

def blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data

layer_tar = io.BytesIO()
with tarfile.open(fileobj=layer_tar, mode="w", format=tarfile.PAX_FORMAT) as t:
    info = t.gettarinfo(binary, arcname=entry)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = 0o755
    with open(binary, "rb") as f:
        t.addfile(info, f)
raw = layer_tar.getvalue()
diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
layer_digest, layer = blob(gzip.compress(raw, mtime=0))
config_digest, config = blob(json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/" + entry]},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
}, sort_keys=True).encode())
manifest_digest, manifest = blob(json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": config_digest, "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest, "size": len(layer)}],
}, sort_keys=True).encode())
index = json.dumps({
    "schemaVersion": 2,
    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": manifest_digest, "size": len(manifest),
                   "annotations": {"io.containerd.image.name": ref,
                                   "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}}],
}).encode()
with tarfile.open(out, "w") as t:
    def add(name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    add("index.json", index)
    for digest, data in ((layer_digest, layer), (config_digest, config), (manifest_digest, manifest)):
        add("blobs/sha256/" + digest.split(":", 1)[1], data)
PY
}
oci_archive "$CACHE/bin/pause" "$CACHE/images/pause.tar" "$PAUSE_IMAGE"
oci_archive "$CACHE/bin/agnhost" "$CACHE/images/agnhost.tar" "$AGNHOST_IMAGE"

all_built || fail "some output is missing after the build"
echo "$STAMP_WANTED" > "$CACHE/stamp"
log "done in $(elapsed); outputs in $CACHE/bin and $CACHE/images"
