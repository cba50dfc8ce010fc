#pragma once
/// Thread count of the benchmarks: every core, or LOPT_BENCH_THREADS (e.g. 1 while other jobs share
/// the machine).
#include <algorithm>
#include <cstdlib>
#include <thread>

namespace lopt_bench {

inline int bench_threads() {
  if (const char* t = std::getenv("LOPT_BENCH_THREADS"); t && std::atoi(t) > 0) return std::atoi(t);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace lopt_bench
