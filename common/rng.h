#pragma once
/// Seeded random streams. Every random choice in lopt draws from a torch CPU generator
/// derived from (seed, stream name), so runs are reproducible and streams independent.
#include <ATen/core/Generator.h>

#include <cstdint>
#include <string>

namespace lopt {

/// Mixes a 64-bit value (splitmix64 finaliser); used to derive independent seeds.
uint64_t mix_seed(uint64_t x);

/// Seed for the named stream of `seed`, e.g. derive_seed(0, "init").
uint64_t derive_seed(uint64_t seed, const std::string& stream);

/// A fresh CPU generator seeded with `seed`.
at::Generator make_generator(uint64_t seed);

/// Serialises / restores a CPU generator's full state (for exact checkpoint resume).
std::string generator_state(at::Generator& gen);
void set_generator_state(at::Generator& gen, const std::string& state);

}  // namespace lopt
