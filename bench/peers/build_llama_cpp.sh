#!/usr/bin/env bash
# bench/peers/build_llama_cpp.sh — fetch and build the llama.cpp peer, CPU-only.
#
# Downloads the llama-cpp-python source distribution from PyPI with pip (it vendors the full
# llama.cpp source in vendor/llama.cpp) into bench/peers/.cache (git-ignored; nothing of
# llama.cpp is committed), records which llama.cpp commit it vendors, and builds llama-server,
# llama-bench, llama-batched-bench and llama-quantize with cmake: Release, CPU only
# (GGML_NATIVE=ON, no CUDA/Metal/Vulkan/BLAS), no web UI download, static libs.
#
# The commit: the sdist carries no .git, so it is read from the sdist's CHANGELOG.md (the
# first "update llama.cpp to ggml-org/llama.cpp@<hash>" line under the sdist's version);
# the sdist version and the tarball's sha256 are recorded too. All three go to
# bench/peers/.cache/llama_cpp_info.json (race.sh copies them into the results JSON) and
# into the binaries' --version via LLAMA_BUILD_COMMIT.
#
# AMX: on a CPU with AMX-INT8, llama.cpp 0c1e57098 built with GGML_NATIVE=ON crashes
# (SIGSEGV in ggml_backend_amx_mul_mat during llama-server's warm-up with -np 32; seen on a
# Xeon with AVX-512 + AMX, 2026-12-03, while AMX itself works there). There the peer is built
# with GGML_NATIVE=OFF and each of the CPU's own ISA options (AVX-512, VNNI, BF16, ...)
# switched on except AMX, so weight repacking (its interleaved Q4_0/Q4_K/Q8_0 kernels) stays
# on; LLAMA_CPP_AMX=on builds native anyway. The build directory and llama_cpp_info.json say
# which.
# LLAMA_CPP_ISA=avx2 builds the peer for an AVX2-only CPU (AVX, AVX2, BMI2, FMA, F16C; no
# AVX-512, VNNI or AMX) into build-<version>-avx2 with its own llama_cpp_info-avx2.json: on an
# AVX-512 machine it stands in for the AVX2-only kind (race.sh RACE_ISA=avx2 pairs it with a
# peftd built for x86-64-v3).
# Knobs: LLAMA_CPP_PYTHON_VERSION (pin, e.g. 0.3.36; default: the newest on PyPI the first
# time, then whatever is cached), LLAMA_CPP_AMX (auto | on), LLAMA_CPP_ISA (native | avx2),
# JOBS (default 2), NICE (default 10).
# Cached: a second run with the binaries present does nothing but print the info.
set -euo pipefail

cd "$(dirname "$0")"
CACHE=$PWD/.cache
JOBS=${JOBS:-2}
NICE=${NICE:-10}
mkdir -p "$CACHE"

tarball=$(ls "$CACHE"/llama_cpp_python-*.tar.gz 2>/dev/null | sort -V | tail -1 || true)
if [ -n "${LLAMA_CPP_PYTHON_VERSION:-}" ]; then
    tarball=$CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz
fi
if [ -z "$tarball" ] || [ ! -f "$tarball" ]; then
    spec=llama-cpp-python${LLAMA_CPP_PYTHON_VERSION:+==$LLAMA_CPP_PYTHON_VERSION}
    echo "peers: pip download --no-binary :all: --no-deps $spec" >&2
    python3 -m pip download --quiet --no-binary :all: --no-deps -d "$CACHE" "$spec" >&2
    tarball=$(ls "$CACHE"/llama_cpp_python-*.tar.gz | sort -V | tail -1)
fi
version=$(basename "$tarball" .tar.gz); version=${version#llama_cpp_python-}
src=$CACHE/llama_cpp_python-$version
if [ ! -d "$src/vendor/llama.cpp" ]; then
    tar -xzf "$tarball" -C "$CACHE"
fi
sha=$(sha256sum "$tarball" | cut -d' ' -f1)
# First llama.cpp hash listed under "## [<version>]" in the sdist's changelog.
commit=$(awk -v v="## [$version]" '
    index($0, v) == 1 { inside = 1; next }
    inside && /^## \[/ { exit }
    inside && match($0, /ggml-org\/llama\.cpp@[0-9a-f]+/) { print substr($0, RSTART + 19, RLENGTH - 19); exit }
' "$src/CHANGELOG.md")
commit=${commit:-unknown}

LC=$src/vendor/llama.cpp
BUILD=$CACHE/build-$version
isa="-DGGML_NATIVE=ON"; isa_note="GGML_NATIVE=ON"; INFO=$CACHE/llama_cpp_info.json
if [ "${LLAMA_CPP_ISA:-native}" = avx2 ]; then
    isa="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON
         -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF
         -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    isa_note="GGML_NATIVE=OFF, AVX2-only (AVX AVX2 BMI2 FMA F16C; no AVX-512/VNNI/AMX)"
    BUILD=$BUILD-avx2; INFO=$CACHE/llama_cpp_info-avx2.json
elif [ "${LLAMA_CPP_ISA:-native}" != native ]; then
    echo "peers: LLAMA_CPP_ISA must be native or avx2 (not $LLAMA_CPP_ISA)" >&2; exit 2
elif grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && [ "${LLAMA_CPP_AMX:-auto}" != on ]; then
    flags=$(grep -m1 '^flags' /proc/cpuinfo)
    has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
    isa="-DGGML_NATIVE=OFF -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_BMI2=$(has bmi2)
         -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c) -DGGML_AVX_VNNI=$(has avx_vnni)
         -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VBMI=$(has avx512vbmi)
         -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16)
         -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    isa_note="GGML_NATIVE=OFF, this CPU's ISA options without AMX (ggml's AMX path crashes)"
    BUILD=$BUILD-noamx
fi
BIN=$BUILD/bin
targets="llama-server llama-bench llama-batched-bench llama-quantize"
need=0
for t in $targets; do [ -x "$BIN/$t" ] || need=1; done
# Rebuild (build-info and relink only) when the recorded commit changed.
[ "$(cat "$BUILD/.peer_commit" 2>/dev/null)" = "$commit" ] || need=1
if [ $need = 1 ]; then
    echo "peers: building llama.cpp@$commit (llama-cpp-python $version) CPU-only, -j$JOBS, nice $NICE" >&2
    nice -n "$NICE" cmake -S "$LC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
        $isa -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF \
        -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_COMMIT="$commit" -DLLAMA_BUILD_NUMBER=0 >&2
    nice -n "$NICE" cmake --build "$BUILD" -j "$JOBS" --target $targets >&2
    echo "$commit" >"$BUILD/.peer_commit"
fi

cat > "$INFO" <<JSON
{"llama_cpp_commit": "$commit", "llama_cpp_python_sdist": "$version",
 "sdist_sha256": "$sha", "source": "$LC", "bin": "$BIN",
 "cmake": "Release $isa_note GGML_CUDA=OFF GGML_BLAS=OFF GGML_OPENMP=ON static",
 "compiler": "$(cc --version | head -1)"}
JSON
cat "$INFO"
