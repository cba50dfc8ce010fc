#!/usr/bin/env bash
# Unpacks the Debian packages a GPU machine without them needs to build lopt (Highway, Google
# Benchmark) into gpu_deps/ (git-ignored), to carry there beside the tree: scripts/gpu_check.sh puts
# gpu_deps/usr on CMAKE_PREFIX_PATH. HDF5 is not carried: the GPU build uses -DLOPT_HDF5=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf gpu_deps && mkdir -p gpu_deps/debs
( cd gpu_deps/debs && apt-get download libhwy-dev libhwy1 libbenchmark-dev libbenchmark1debian >/dev/null )
for d in gpu_deps/debs/*.deb; do dpkg -x "$d" gpu_deps; done
rm -rf gpu_deps/debs
du -sh gpu_deps
