#!/usr/bin/env bash
# tests/gpu/pack.sh [BUNDLE] — the CUDA binaries of tests/gpu/run.sh, built HERE and packed for a
# lent GPU machine (the `device` tool). That machine has the CUDA toolkit, the driver and python
# with numpy/torch, but none of Debian's -dev packages and no network: it cannot build peftd.
# So: make CUDA=1 in build-gpu, strip the binaries, and put them with every shared library they
# load beyond glibc and CUDA's own (libmicrohttpd, LMDB, OpenBLAS, libcurl and their
# dependencies) in one xz tarball, default .gpu/bundle.tar.xz (ignored by git). The device
# tool carries at most 64 MiB with the working tree, so the size is printed and checked.
# tests/gpu/device_run.sh unpacks it there and runs tests/gpu/run.sh with GPU_PREBUILT=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=${1:-.gpu/bundle.tar.xz}
BUILD=build-gpu
BINS=(peftd peftd-loadgen tests/test_backend_parity tests/test_gpu_pool_graph bench/bench_adapters bench/bench_gpu)
kind=$(make -j"$(nproc)" CUDA=1 BUILD="$BUILD" all "${BINS[@]/#/$BUILD/}" | grep -m1 '^peftd: ')
echo "$kind"
[[ $kind == *"CPU + CUDA"* ]] || { echo "pack: the CUDA backend was not built" >&2; exit 1; }
STAGE=$(mktemp -d /tmp/peftd-gpu-pack-XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/lib" "$STAGE/tests" "$STAGE/bench"
for b in "${BINS[@]}"; do
    cp "$BUILD/$b" "$STAGE/$b"
    strip "$STAGE/$b"
done
# Libraries: everything ldd resolves except the C library's own and CUDA's (the device's
# toolkit and driver provide those; a CUDA library missing there is looked up by device_run.sh).
system_libs='^(linux-vdso|ld-linux|libc\.|libm\.|libpthread|libdl|librt|libresolv|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas)'
for b in "${BINS[@]}"; do ldd "$BUILD/$b"; done | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
    while read -r name path; do
        [[ $name =~ $system_libs ]] || cp -L "$path" "$STAGE/lib/$name"
    done
{
    echo "$kind"
    echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!.gpu' || echo ' + uncommitted changes')"
    echo "packed: $(date -u +%FT%TZ) on $(uname -n), $(nvcc --version | grep -o 'release [0-9.]*')"
    echo "libraries: $(ls "$STAGE/lib" | tr '\n' ' ')"
} >"$STAGE/BUILD_INFO"
mkdir -p "$(dirname "$BUNDLE")"
tar cf - -C "$STAGE" . | xz -9 -T"$(nproc)" >"$BUNDLE.tmp"
mv "$BUNDLE.tmp" "$BUNDLE"
tree_kb=$(git ls-files -co --exclude-standard -z | du -c --files0-from=- | tail -1 | cut -f1)
bundle_kb=$(du -k "$BUNDLE" | cut -f1)
echo "bundle: $BUNDLE $((bundle_kb / 1024)) MiB; with the working tree $(((tree_kb + bundle_kb) / 1024)) MiB of the device tool's 64"
cat "$STAGE/BUILD_INFO"
[ $((tree_kb + bundle_kb)) -lt $((64 * 1024)) ] || { echo "pack: too large for the device tool (64 MiB)" >&2; exit 1; }
