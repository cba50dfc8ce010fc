#!/usr/bin/env bash
# The GPU check, in one go, on a machine with an NVIDIA GPU, nvcc and PyTorch with CUDA (e.g. the
# project's H200 machine: Ubuntu 24.04, PyTorch 2.11 + CUDA 13): builds lopt against that PyTorch's
# LibTorch (-DLOPT_CUDA=ON, -DLOPT_HDF5=OFF: no HDF5 C++ there), runs the CUDA parity and device tests,
# the GPU step benchmark, PyTorch's fused AdamW on the same shapes, and meta-training inner steps/s.
# Writes everything to $OUT (default runs/gpu_check). Prepare Highway and Google Benchmark where the
# machine lacks them with scripts/gpu_deps.sh (here) and carry gpu_deps/ along.
#
# usage: scripts/gpu_check.sh [build-only]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
{ nvidia-smi || true; python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'; nvcc --version | tail -1; } > "$OUT/machine.txt" 2>&1
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
PREFIX="$TORCH_PREFIX"
[ -d gpu_deps/usr ] && PREFIX="$PREFIX;$PWD/gpu_deps/usr"
export LD_LIBRARY_PATH="$TORCH_LIB:$PWD/gpu_deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
GEN=(-G Ninja); command -v ninja >/dev/null || GEN=()
log "configure"
cmake -S . -B build-gpu "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DLOPT_CUDA=ON -DLOPT_HDF5=OFF -DLOPT_DISTRIBUTED=OFF \
  -DCMAKE_CUDA_ARCHITECTURES="${LOPT_CUDA_ARCH:-90}" -DCMAKE_PREFIX_PATH="$PREFIX" > "$OUT/configure.txt" 2>&1 \
  || { tail -40 "$OUT/configure.txt"; exit 1; }
log "build"
start=$(date +%s)
cmake --build build-gpu -j "$(nproc)" > "$OUT/build.txt" 2>&1 || { grep -E "error|Error" "$OUT/build.txt" | head -40; exit 1; }
log "built in $(( $(date +%s) - start )) s"
[ "${1:-}" = build-only ] && exit 0
log "tests (CUDA parity, device, and the CPU suites that need no HDF5 file)"
timeout 300 build-gpu/lopt_tests --gtest_filter='SmallFcLopt*:Device.*:Moe*:Transformer*:Mlp*' > "$OUT/tests.txt" 2>&1
echo "exit $?" >> "$OUT/tests.txt"
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^exit" "$OUT/tests.txt" | tee -a "$OUT/summary.txt"
log "GPU step benchmark"
timeout 240 build-gpu/lopt_bench --benchmark_filter='BM_Gpu' --benchmark_out="$OUT/bench_gpu.json" > "$OUT/bench_gpu.txt" 2>&1
tee -a "$OUT/summary.txt" < "$OUT/bench_gpu.txt" | tail -12
log "PyTorch fused AdamW"
timeout 120 python3 bench/gpu_reference.py 2>&1 | tee -a "$OUT/summary.txt"
log "meta-training inner steps/s (PES estimate of the muLO_M task, 16 members stacked): GPU, then this machine's CPU"
timeout 120 build-gpu/lopt_bench --benchmark_filter='BM_GpuPesEstimate|BM_PesEstimate/1/' > "$OUT/bench_meta.txt" 2>&1
tee -a "$OUT/summary.txt" < "$OUT/bench_meta.txt" | tail -8
