#!/usr/bin/env bash
# Prepares `cargo build --release --features cuda` on a machine with no GPU, no driver and no
# CUDA install (these CPU machines; CI). Run once; then build with plain cargo, no `source` needed:
#
#   scripts/setup_cuda_build.sh && cargo build --release --features cuda
#
# Why each step:
# - The CUDA compiler, headers and libraries come from NVIDIA's PyPI wheels (the only registry that
#   has them here), installed into .cuda/ (ignored by git). CUDA 13.0 by default: the GPU machines
#   we check on run driver 580 (CUDA 13.0) with torch's CUDA-13 libraries, and candle-kernels'
#   PTX must be no newer than the driver (its JIT refuses newer PTX), while the binaries find
#   libcublas.so.13 & co. there instead of carrying ~600 MB of CUDA-12 cuBLAS.
# - candle 0.11.1 turns on cudarc's `dynamic-linking`: every binary links libcuda, libcublas,
#   libcublasLt, libcurand, libnvrtc and (candle-kernels) libcudart at build time. The wheels ship
#   only the versioned sonames, so we add the unversioned names the linker asks for. libcuda is
#   the GPU driver, in no wheel: we generate a link-time stub (soname libcuda.so.1, every driver
#   entry point returning CUDA_ERROR_NO_DEVICE) in lib/stubs, the directory that CUDA's own stub
#   lives in. At run time the real driver's libcuda.so.1 is used.
# - No nvidia-smi here, so the GPU generation is given: CUDA_COMPUTE_CAP (default 90: H100/H200).
# - Cargo gets the environment from .cargo/config.toml [env] (written here, ignored by git), so
#   the default CPU build of a fresh checkout never sees it.
#
# Environment: CUDA_COMPUTE_CAP (90), DEEDIFF_CUDA_DIR (.cuda), PYTHON (python3).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${DEEDIFF_CUDA_DIR:-$root/.cuda}
compute_cap=${CUDA_COMPUTE_CAP:-90}
python=${PYTHON:-python3}
# One CUDA release (13.0) throughout; cudarc reads its version from CUDARC_CUDA_VERSION below.
wheels=(
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)
toolkit=$dest/py/nvidia/cu13

stamp=$dest/wheels.txt
if [ "$(cat "$stamp" 2>/dev/null)" != "${wheels[*]}" ]; then
    echo "setup_cuda_build: installing ${wheels[*]} into $dest/py" >&2
    rm -rf "$dest/py"
    "$python" -m pip install --quiet --no-deps --disable-pip-version-check --target "$dest/py" "${wheels[@]}"
    echo "${wheels[*]}" >"$stamp"
fi

for lib in cudart cublas cublasLt nvrtc curand; do
    versioned=$(cd "$toolkit/lib" && ls "lib$lib.so."* | grep -v builtins | head -n 1)
    ln -sf "$versioned" "$toolkit/lib/lib$lib.so"
done

# The driver stub: every `cu*` function cuda.h declares, before and after its macros map the
# names to their _v2/_v3 versions (cudarc binds the versioned ones).
mkdir -p "$toolkit/lib/stubs" "$dest/build"
{
    grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' "$toolkit/include/cuda.h"
    gcc -E -P -I"$toolkit/include" "$toolkit/include/cuda.h" | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\('
} | tr -d ' \t(' | sort -u | sed 's/.*/int &(void) { return 100; }/' >"$dest/build/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$toolkit/lib/stubs/libcuda.so" "$dest/build/libcuda_stub.c"

config=$root/.cargo/config.toml
marker="# Written by scripts/setup_cuda_build.sh"
if [ -e "$config" ] && ! head -n 1 "$config" | grep -qF "$marker"; then
    echo "setup_cuda_build: $config exists and is not ours; add its [env] entries yourself:" >&2
    config=/dev/stdout
else
    mkdir -p "$root/.cargo"
fi
cat >"$config" <<EOF
$marker (ignored by git): the CUDA toolkit from PyPI wheels for
# \`cargo build --features cuda\`. Only the CUDA crates (cudarc, candle-kernels) read these.
[env]
CUDA_ROOT = "$toolkit"
NVCC = "$toolkit/bin/nvcc"
CUDARC_CUDA_VERSION = "13000"
CUDA_COMPUTE_CAP = "$compute_cap"
EOF

"$toolkit/bin/nvcc" --version | tail -n 2 >&2
echo "setup_cuda_build: ready (compute capability $compute_cap); now: cargo build --release --features cuda" >&2
