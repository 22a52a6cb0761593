#!/usr/bin/env bash
# The CUDA toolkit for `cargo build --features cuda`, from PyPI, outside the repo.
#
#   source tools/cuda-env.sh [VENV]        # default VENV: ../cuda-venv beside the checkout
#   cargo build --release -p foundry-cli --features cuda
#
# Installs (once) NVIDIA's CUDA 13.0.x wheels into VENV: nvidia-cuda-nvcc (nvcc, cudafe++,
# ptxas, nvlink, fatbinary), nvidia-nvvm (cicc, libdevice), nvidia-cuda-crt,
# nvidia-cuda-runtime and nvidia-cuda-cccl (headers; cuda_fp16.h needs cccl's nv/target), all
# under site-packages/nvidia/cu13. 13.0.x is pinned: the GPU machines this project is lent run
# driver 580 (CUDA 13.0), which refuses PTX from a newer toolkit. Then exports what candle's
# build scripts read: CUDA_HOME / CUDA_PATH / CUDA_ROOT, PATH, LD_LIBRARY_PATH and
# CUDA_COMPUTE_CAP=90 (H100 / H200). Sourced, it sets them in the calling shell; run, it
# prints them.
# Strict mode only when run: sourced, it must not change the caller's shell options.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then set -euo pipefail; fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$(dirname "$here")/cuda-venv}"
wheels=(
  "nvidia-cuda-nvcc==13.0.*"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-crt==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
  # The libraries candle links: cuBLAS(Lt), NVRTC, cuRAND (libcudart comes with the runtime).
  "nvidia-cublas==13.0.*"
  "nvidia-cuda-nvrtc==13.0.*"
  "nvidia-curand"
)

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import importlib.metadata as m; [m.version(p) for p in ('nvidia-cuda-nvcc', 'nvidia-cublas', 'nvidia-cuda-nvrtc', 'nvidia-curand')]" >/dev/null 2>&1; then
  echo "installing the CUDA 13.0 wheels into $venv" >&2
  "$venv/bin/python" -m pip install --quiet "${wheels[@]}" || {
    echo "could not install the CUDA wheels" >&2
    return 1 2>/dev/null || exit 1
  }
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cuda="$site/nvidia/cu13"
if [ ! -x "$cuda/bin/nvcc" ]; then
  echo "no nvcc under $cuda: the wheels did not install as expected" >&2
  return 1 2>/dev/null || exit 1
fi
# The wheels ship versioned libraries only (libcublas.so.13, …); `-lcublas` needs the plain
# name, so a link folder beside them holds one unversioned link per library.
links="$venv/cuda-link"
mkdir -p "$links"
for lib in "$cuda"/lib/lib*.so.*; do
  base="$(basename "$lib")"
  ln -sf "$lib" "$links/${base%%.so.*}.so"
done
# libcuda is the driver's: the GPU machine has it, this one does not (see README, GPU build).
export CUDA_HOME="$cuda" CUDA_PATH="$cuda" CUDA_ROOT="$cuda"
export PATH="$cuda/bin:$PATH"
export LD_LIBRARY_PATH="$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The C compiler driver that links Rust binaries searches LIBRARY_PATH for `-l` libraries.
export LIBRARY_PATH="$links${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  echo "export CUDA_HOME=$CUDA_HOME CUDA_PATH=$CUDA_PATH CUDA_ROOT=$CUDA_ROOT"
  echo "export PATH=$cuda/bin:\$PATH LD_LIBRARY_PATH=$LD_LIBRARY_PATH CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
fi
"$cuda/bin/nvcc" --version | tail -n 2 >&2
