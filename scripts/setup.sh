#!/usr/bin/env bash
# Installs every Debian package lopt needs to build, test and run. Idempotent:
# packages already present are skipped; uses sudo when not root.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config
  # LibTorch (CPU) and a fast BLAS behind it (without libopenblas0-openmp every
  # matmul runs on the reference BLAS, ~16x slower)
  libtorch-dev libopenblas0-openmp
  # C++ libraries
  libboost-program-options-dev nlohmann-json3-dev libhdf5-dev zlib1g-dev
  libgtest-dev libbenchmark-dev
  # Gloo headers for multi-process runs (c10d ProcessGroupGloo is inside LibTorch)
  libgloo-dev
  # portable SIMD with runtime dispatch (the fused learned-optimizer kernels)
  libhwy-dev
  # plotting and result inspection
  python3 python3-h5py python3-matplotlib python3-numpy
  # data (python3-sklearn: its 8x8 handwritten digits file, read directly; no Python at run time)
  dataset-fashion-mnist fortunes fortunes-de python3-sklearn
  # the HTML report's check in a real browser (the tests render it headless)
  chromium
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} Debian packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
