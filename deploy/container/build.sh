#!/usr/bin/env bash
# deploy/container/build.sh — builds the peftd container images with podman (Debian's
# podman/buildah packages) and smoke-tests the CPU one:
#   deploy/container/build.sh [cpu|cuda|all]        (default: cpu)
# BASE: the Debian bookworm image. When unset and docker.io cannot be pulled, a base is
# bootstrapped from Debian's mirror with mmdebstrap (minbase + ca-certificates) and
# imported as localhost/debian-base:bookworm.
# CUDA variant: CUDA_DEVEL / CUDA_RUNTIME (default nvidia/cuda 13.0 devel/runtime on Ubuntu
# 24.04). Where those cannot be pulled, CUDA_FROM_HOST=1 builds localhost/cuda-devel from
# the base plus this machine's /usr/local/cuda (nvcc, headers, cudart, cublas) and a
# matching localhost/cuda-runtime (cudart + cublas only).
# The smoke test runs the CPU image with an admin key, waits for /health, asks for one
# completion and checks the HEALTHCHECK and the fixed UID. Prints the time of each step.
# ISOLATION: podman build's --isolation (default oci). A machine that is itself a
# VM/container with hybrid cgroups (crun: "cgroups in hybrid mode not supported", even with
# --cgroups=disabled) builds with ISOLATION=chroot and runs the smoke test with
# RUNNER=buildah (buildah run --isolation chroot: no crun); auto-detected below.
# Images are built in docker format: the OCI format drops HEALTHCHECK.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${ISOLATION:-}" ] && [ -d /sys/fs/cgroup/unified ] && [ -d /sys/fs/cgroup/cpu ]; then
    ISOLATION=chroot; export RUNNER=${RUNNER:-buildah}
    echo "== hybrid cgroups: podman build --isolation chroot, smoke test with RUNNER=$RUNNER"
fi
ISOLATION=${ISOLATION:-oci}
what=${1:-cpu}
TAG=${TAG:-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}
MARCH=${MARCH:-x86-64-v2}
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

base_image() {
    if [ -n "${BASE:-}" ]; then echo "$BASE"; return; fi
    if podman image exists localhost/debian-base:bookworm; then echo localhost/debian-base:bookworm; return; fi
    if timeout 60 podman pull -q docker.io/library/debian:bookworm >/dev/null 2>&1; then
        echo docker.io/library/debian:bookworm; return
    fi
    step "no registry: mmdebstrap bookworm from deb.debian.org" >&2
    tar=$(mktemp -d)/bookworm.tar
    mmdebstrap --variant=minbase --include=ca-certificates bookworm "$tar" >&2
    podman import "$tar" localhost/debian-base:bookworm >&2
    rm -f "$tar"
    echo localhost/debian-base:bookworm
}

cuda_from_host() {  # $1 = base image
    local ctx; ctx=$(mktemp -d); local cu; cu=$(readlink -f /usr/local/cuda)
    step "CUDA toolkit from $cu (trimmed) into localhost/cuda-devel + cuda-runtime" >&2
    mkdir -p "$ctx/devel/cuda/lib" "$ctx/runtime/cuda/lib"
    cp -a "$cu/bin" "$cu/nvvm" "$cu/include" "$cu/targets" "$ctx/devel/cuda/"
    [ -e "$cu/lib64" ] && ln -s lib "$ctx/devel/cuda/lib64" && ln -s lib "$ctx/runtime/cuda/lib64"
    for l in libcudart libcublas libcublasLt; do
        cp -a "$cu"/lib/$l.so* "$ctx/devel/cuda/lib/"
        cp -a "$cu"/lib/$l.so.* "$ctx/runtime/cuda/lib/"
    done
    printf 'FROM %s\nRUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*\nCOPY cuda /usr/local/cuda\nENV PATH=/usr/local/cuda/bin:$PATH\n' "$1" > "$ctx/devel/Containerfile"
    printf 'FROM %s\nCOPY cuda /usr/local/cuda\nRUN echo /usr/local/cuda/lib64 > /etc/ld.so.conf.d/cuda.conf && ldconfig\n' "$1" > "$ctx/runtime/Containerfile"
    podman build --isolation "$ISOLATION" -q -t localhost/cuda-devel:host "$ctx/devel" >&2
    podman build --isolation "$ISOLATION" -q -t localhost/cuda-runtime:host "$ctx/runtime" >&2
    rm -rf "$ctx"
}

BASE_IMG=$(base_image)
step "base: $BASE_IMG"
if [ "$what" = cpu ] || [ "$what" = all ]; then
    step "build peftd:cpu-$TAG (MARCH=$MARCH)"
    podman build --format docker --isolation "$ISOLATION" -f deploy/container/Containerfile --build-arg BASE="$BASE_IMG" --build-arg MARCH="$MARCH" \
        -t "localhost/peftd:cpu-$TAG" -t localhost/peftd:cpu .
    step "built peftd:cpu-$TAG"
    deploy/container/smoke.sh "localhost/peftd:cpu-$TAG"
    step "smoke test passed"
fi
if [ "$what" = cuda ] || [ "$what" = all ]; then
    devel=${CUDA_DEVEL:-docker.io/nvidia/cuda:13.0.1-devel-ubuntu24.04}
    runtime=${CUDA_RUNTIME:-docker.io/nvidia/cuda:13.0.1-runtime-ubuntu24.04}
    if [ "${CUDA_FROM_HOST:-0}" = 1 ]; then
        podman image exists localhost/cuda-runtime:host || cuda_from_host "$BASE_IMG"
        devel=localhost/cuda-devel:host; runtime=localhost/cuda-runtime:host
        RUNTIME_PKGS="libmicrohttpd12 libcjson1 libuv1 liblmdb0 libopenblas0-pthread libpcre2-8-0 libutf8proc2 libssl3 libcurl4"
    fi
    step "build peftd:cuda-$TAG (devel $devel, runtime $runtime)"
    podman build --format docker --isolation "$ISOLATION" -f deploy/container/Containerfile.cuda --build-arg CUDA_DEVEL="$devel" \
        --build-arg CUDA_RUNTIME="$runtime" --build-arg MARCH="$MARCH" \
        ${RUNTIME_PKGS:+--build-arg RUNTIME_PKGS="$RUNTIME_PKGS"} \
        -t "localhost/peftd:cuda-$TAG" -t localhost/peftd:cuda .
    step "built peftd:cuda-$TAG"
    c=$(buildah from "localhost/peftd:cuda-$TAG")
    buildah run --isolation "$ISOLATION" --user 10001:10001 "$c" -- sh -c 'ldd /usr/bin/peftd | grep -E "cudart|cublas" && id'
    buildah rm "$c" >/dev/null
    step "CUDA image: peftd links cudart/cublas, runs as 10001 (no GPU here: not served)"
fi
