#include "optimizers/safetensors.h"

#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/config.h"
#include "common/errors.h"

namespace lopt {

namespace {
const char* kHint = "expected a safetensors file (u64 header length, JSON header, raw data)";
}

SafeTensors read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path, "cannot open", "check the path of the learned-optimizer checkpoint");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  if (bytes.size() < 8) throw IoError(path, "file is too short for a safetensors header", kHint);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  if (header_len > bytes.size() - 8)
    throw IoError(path, "header length " + std::to_string(header_len) + " exceeds the file size " +
                            std::to_string(bytes.size()), kHint);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.substr(8, header_len));
  } catch (const nlohmann::json::exception& e) {
    throw IoError(path, std::string("header is not valid JSON: ") + e.what(), kHint);
  }
  if (!header.is_object()) throw IoError(path, "header is not a JSON object", kHint);
  const size_t data_start = 8 + header_len, data_size = bytes.size() - data_start;
  SafeTensors out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it.value().is_object())
        for (auto m = it.value().begin(); m != it.value().end(); ++m)
          out.metadata[m.key()] = m.value().is_string() ? m.value().get<std::string>() : m.value().dump();
      continue;
    }
    const auto& e = it.value();
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw IoError(path, "tensor '" + it.key() + "' lacks dtype, shape or data_offsets", kHint);
    std::string dtype;
    std::vector<int64_t> shape;
    std::vector<uint64_t> off;
    try {
      dtype = e["dtype"].get<std::string>();
      shape = e["shape"].get<std::vector<int64_t>>();
      off = e["data_offsets"].get<std::vector<uint64_t>>();
    } catch (const nlohmann::json::exception&) {
      throw IoError(path, "tensor '" + it.key() + "': dtype must be a string, shape and data_offsets lists of integers", kHint);
    }
    int64_t numel = 1;
    for (auto s : shape) {
      if (s < 0) throw IoError(path, "tensor '" + it.key() + "' has a negative dimension", kHint);
      if (__builtin_mul_overflow(numel, s, &numel) || numel > (int64_t(1) << 40))
        throw IoError(path, "tensor '" + it.key() + "' has a shape too large to be real", kHint);
    }
    torch::ScalarType st;
    size_t elem;
    if (dtype == "F32") st = torch::kFloat32, elem = 4;
    else if (dtype == "F64") st = torch::kFloat64, elem = 8;
    else if (dtype == "F16") st = torch::kFloat16, elem = 2;
    else if (dtype == "BF16") st = torch::kBFloat16, elem = 2;
    else throw IoError(path, "tensor '" + it.key() + "' has unsupported dtype " + dtype + " (F32, F64, F16, BF16)");
    if (off.size() != 2 || off[0] > off[1] || off[1] > data_size)
      throw IoError(path, "tensor '" + it.key() + "' has data_offsets outside the data section", kHint);
    if (off[1] - off[0] != static_cast<uint64_t>(numel) * elem)
      throw IoError(path, "tensor '" + it.key() + "' has " + std::to_string(off[1] - off[0]) + " bytes but shape needs " +
                              std::to_string(numel * static_cast<int64_t>(elem)), kHint);
    auto t = torch::empty(shape, st);
    if (numel > 0) std::memcpy(t.data_ptr(), bytes.data() + data_start + off[0], off[1] - off[0]);
    out.tensors[it.key()] = st == torch::kFloat64 ? t : t.to(torch::kFloat32);
  }
  return out;
}

void write_safetensors(const std::string& path, const SafeTensors& st) {
  nlohmann::json header = nlohmann::json::object();
  if (!st.metadata.empty()) header["__metadata__"] = st.metadata;
  std::string data;
  for (const auto& [name, t] : st.tensors) {
    const bool f64 = t.scalar_type() == torch::kFloat64;
    auto c = t.detach().to(f64 ? torch::kFloat64 : torch::kFloat32).contiguous();
    size_t begin = data.size();
    data.append(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel()) * c.element_size());
    header[name] = {{"dtype", f64 ? "F64" : "F32"}, {"shape", c.sizes().vec()}, {"data_offsets", {begin, data.size()}}};
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h += ' ';  // align the data section as the reference writer does
  std::string out(8, '\0');
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += h;
  out += data;
  write_text_atomic(path, out);
}

}  // namespace lopt
