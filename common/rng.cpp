#include "common/rng.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>

#include <cstring>
#include <mutex>

namespace lopt {

uint64_t mix_seed(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t derive_seed(uint64_t seed, const std::string& stream) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a over the stream name
  for (unsigned char c : stream) h = (h ^ c) * 1099511628211ULL;
  return mix_seed(seed ^ mix_seed(h)) & ((1ULL << 63) - 1);
}

at::Generator make_generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

std::string generator_state(at::Generator& gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  at::Tensor s = gen.get_state();
  return std::string(reinterpret_cast<const char*>(s.data_ptr()), s.numel() * s.element_size());
}

void set_generator_state(at::Generator& gen, const std::string& state) {
  at::Tensor s = at::empty({static_cast<int64_t>(state.size())}, at::kByte);
  std::memcpy(s.data_ptr(), state.data(), state.size());
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(s);
}

}  // namespace lopt
