# Finds every dependency; a missing one fails configure with the Debian package to install.
# scripts/setup.sh installs them all.

function(lopt_require found what package)
  if(NOT ${found})
    message(FATAL_ERROR
      "lopt: ${what} was not found. Install the Debian package '${package}' "
      "(sudo apt-get install ${package}), or run scripts/setup.sh which installs everything.")
  endif()
endfunction()

find_package(Torch QUIET)
lopt_require(Torch_FOUND "LibTorch (TorchConfig.cmake)" "libtorch-dev")
# Debian's TorchConfig adds its own flags; keep LibTorch headers out of our warnings.
foreach(_t ${TORCH_LIBRARIES})
  if(TARGET ${_t})
    get_target_property(_inc ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(_inc)
      set_target_properties(${_t} PROPERTIES INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${_inc}")
    endif()
  endif()
endforeach()

# OpenBLAS with OpenMP must back LibTorch, or matmuls run on the reference BLAS.
find_file(LOPT_OPENBLAS_OPENMP libopenblas.so.0
  PATHS /usr/lib/x86_64-linux-gnu/openblas-openmp /usr/lib/aarch64-linux-gnu/openblas-openmp
  NO_DEFAULT_PATH)
if(NOT LOPT_OPENBLAS_OPENMP)
  message(WARNING "lopt: libopenblas0-openmp is not installed; LibTorch will use the reference BLAS "
                  "(~16x slower matmuls). Install the Debian package 'libopenblas0-openmp'.")
endif()

find_package(Boost QUIET COMPONENTS program_options)
lopt_require(Boost_FOUND "Boost.Program_options" "libboost-program-options-dev")

find_package(nlohmann_json QUIET)
lopt_require(nlohmann_json_FOUND "nlohmann/json" "nlohmann-json3-dev")

if(LOPT_HDF5)
  find_package(HDF5 QUIET COMPONENTS C CXX)
  lopt_require(HDF5_FOUND "HDF5 with its C++ API" "libhdf5-dev")
endif()

# OpenMP: LibTorch's at::parallel_for is only parallel in code compiled with it (ATen/ParallelOpenMP.h
# keys on _OPENMP), and the fused kernels' parallel loops use it directly; GCC ships it (libgomp).
find_package(OpenMP QUIET COMPONENTS CXX)
lopt_require(OpenMP_CXX_FOUND "OpenMP for C++" "libgomp1 (part of g++)")

# Google Highway: portable SIMD with runtime dispatch for the fused learned-optimizer kernels.
find_package(hwy QUIET)
lopt_require(hwy_FOUND "Google Highway (hwy-config.cmake)" "libhwy-dev")

find_package(ZLIB QUIET)
lopt_require(ZLIB_FOUND "zlib" "zlib1g-dev")

if(LOPT_BUILD_TESTS)
  find_package(GTest QUIET)
  lopt_require(GTest_FOUND "GoogleTest" "libgtest-dev")
endif()
if(LOPT_BUILD_BENCH)
  find_package(benchmark QUIET)
  lopt_require(benchmark_FOUND "Google Benchmark" "libbenchmark-dev")
endif()
