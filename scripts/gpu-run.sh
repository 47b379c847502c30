#!/usr/bin/env bash
# The GPU check's one command on the GPU machine (copied into target/gpu-bundle/run.sh by
# scripts/gpu-bundle; run from the repository root: bash target/gpu-bundle/run.sh [ARGS]).
#  1. Builds ggml's CUDA backend module (libggml-cuda.so, GGML_BACKEND_DL) from the carried
#     ggml source with the machine's nvcc for its GPU architecture (CUDA_ARCH, default: the
#     first GPU's compute capability from nvidia-smi, else 90), SASS only, timed; skipped when
#     the module is already there or there is no nvcc (then the check is a CPU rehearsal).
#  2. Runs gpu_check with the bundle's libraries and modules, printing one table row per
#     measurement as it finishes. ARGS go to gpu_check (--quick, --budget SIZE, --no-q4km,
#     --dir DIR). JQ_GPU_BUILD_ONLY=1 stops after step 1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
row() { echo "| $1 | $2 | $3 |"; }
if [ ! -f "$here/libggml-cuda.so" ]; then
  if command -v nvcc >/dev/null 2>&1; then
    arch="${CUDA_ARCH:-}"
    if [ -z "$arch" ] && command -v nvidia-smi >/dev/null 2>&1; then
      arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
    fi
    arch="${arch:-90}"
    gen=()
    command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
    t0=$(date +%s)
    # SASS only ("-real"): the driver needs no newer PTX JIT than it has.
    cmake -S "$here/ggml" -B "$here/cuda-build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DGGML_CUDA=ON -DGGML_BACKEND_DL=ON -DGGML_CPU=OFF -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON \
      -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF ${CUDAToolkit_ROOT:+-DCUDAToolkit_ROOT=$CUDAToolkit_ROOT} \
      -DCMAKE_CUDA_ARCHITECTURES="${arch}-real" -DGGML_CUDA_NO_VMM="${GGML_CUDA_NO_VMM:-OFF}" \
      > "$here/cuda-configure.log" 2>&1 || { tail -20 "$here/cuda-configure.log" >&2; exit 1; }
    cmake --build "$here/cuda-build" --target ggml-cuda -j "$(nproc)" > "$here/cuda-build.log" 2>&1 \
      || { tail -30 "$here/cuda-build.log" >&2; exit 1; }
    find "$here/cuda-build" -name 'libggml-cuda.so' -exec cp {} "$here/" \;
    row build "ggml CUDA module for sm_${arch} ($(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), $(nproc) cores)" \
      "$(( $(date +%s) - t0 )) s, $(du -h "$here/libggml-cuda.so" | cut -f1)"
  else
    row build "no nvcc on this machine" "no CUDA module: the check runs on the CPU backend"
  fi
fi
[ "${JQ_GPU_BUILD_ONLY:-0}" = 1 ] && exit 0
export LD_LIBRARY_PATH="$here:${LD_LIBRARY_PATH:-}"
export JQ_BACKENDS_DIR="$here"
exec "$here/gpu_check" "$@"
