#pragma once
/// safetensors files: an 8-byte little-endian header length, a JSON header
/// {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
/// then the raw little-endian tensor bytes.
#include <torch/types.h>

#include <map>
#include <string>

namespace lopt {

struct SafeTensors {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

/// Reads F32 / F64 / F16 / BF16 tensors (F64 stays float64, the rest are returned as float32). Throws IoError naming the path and
/// the problem for a truncated file, a bad header, overlapping or out-of-range offsets.
SafeTensors read_safetensors(const std::string& path);

/// Writes tensors as F32 (F64 for float64 tensors) atomically (temporary file, then rename).
void write_safetensors(const std::string& path, const SafeTensors& st);

}  // namespace lopt
