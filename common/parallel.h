#pragma once
/// Parallel loops over work items on LibTorch's intra-op threads (at::set_num_threads).
#include <cstdint>
#include <functional>

namespace lopt {

/// Runs body(i) for i in [0, n), handing items to at most at::get_num_threads() threads
/// dynamically (items may differ in size). Serial for one item, one thread, or when already inside
/// a parallel region. The first exception a body throws is rethrown after the loop.
void parallel_items(int64_t n, const std::function<void(int64_t)>& body);

/// Keeps freed tensor memory in the process (glibc malloc: no mmap below 256 MiB, trim only above
/// 1 GiB free). Tensor ops allocate and free megabyte buffers at every step; by default glibc maps
/// and unmaps them each time, and the page faults cost more than the arithmetic (the Celo2 population
/// step ran 6x slower). LOPT_MALLOC_TUNING=0 keeps glibc's defaults; a no-op off glibc.
void tune_allocator();

}  // namespace lopt
