#pragma once
/// Parallel loops over work items on LibTorch's intra-op threads (at::set_num_threads).
#include <cstdint>
#include <functional>

namespace lopt {

/// Runs body(i) for i in [0, n), handing items to at most at::get_num_threads() threads
/// dynamically (items may differ in size). Serial for one item, one thread, or when already inside
/// a parallel region. The first exception a body throws is rethrown after the loop.
void parallel_items(int64_t n, const std::function<void(int64_t)>& body);

}  // namespace lopt
