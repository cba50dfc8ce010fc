// Seeded in-process fuzzing of the readers: a few hundred random mutations of valid configs, IDX
// and safetensors files. Each input must be accepted or rejected with a typed lopt error
// (lopt::Error); any other exception (nlohmann, c10, std::bad_alloc) or a crash fails the test.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <random>

#include "common/config.h"
#include "common/errors.h"
#include "experiments/train.h"
#include "optimizers/optimizer.h"
#include "optimizers/safetensors.h"
#include "tasks/data/image_dataset.h"
#include "support.h"

using lopt::json;

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

/// Flips, overwrites, inserts, deletes or truncates a few bytes.
std::string mutate_bytes(std::string s, std::mt19937_64& rng) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int k = 0; k < edits && !s.empty(); ++k) {
    const size_t i = rng() % s.size();
    switch (rng() % 5) {
      case 0: s[i] = static_cast<char>(s[i] ^ (1 << (rng() % 8))); break;
      case 1: s[i] = static_cast<char>(rng()); break;
      case 2: s.insert(i, 1, static_cast<char>(rng())); break;
      case 3: s.erase(i, 1 + rng() % 8); break;
      default: s.resize(i); break;
    }
  }
  return s;
}

/// A random JSON value of a random type (including extremes that break naive readers).
json random_value(std::mt19937_64& rng) {
  switch (rng() % 10) {
    case 0: return nullptr;
    case 1: return -static_cast<int64_t>(rng() % 1000);
    case 2: return static_cast<int64_t>(rng());
    case 3: return 1e300;
    case 4: return 32.7;
    case 5: return "bogus";
    case 6: return json::array({1, "x"});
    case 7: return json::object({{"type", "bogus"}});
    case 8: return true;
    default: return static_cast<int64_t>(rng() % 5);
  }
}

/// Replaces a random leaf (or adds an unknown key) somewhere in `j`.
void mutate_json(json& j, std::mt19937_64& rng) {
  json* node = &j;
  for (int depth = 0; depth < 4 && node->is_object() && !node->empty(); ++depth) {
    auto it = node->begin();
    std::advance(it, static_cast<long>(rng() % node->size()));
    if (!it->is_object() || rng() % 3 == 0) {
      *it = random_value(rng);
      return;
    }
    node = &*it;
  }
  if (node->is_object()) (*node)["unknown_" + std::to_string(rng() % 100)] = random_value(rng);
}

template <class F>
void expect_typed(const F& f, const std::string& what) {
  try {
    f();
  } catch (const lopt::Error&) {
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": foreign exception " << typeid(e).name() << ": " << e.what();
  }
}

}  // namespace

TEST(Fuzz, ReadersAcceptOrRejectWithTypedErrors) {
  lopt_test::TempDir dir;
  std::mt19937_64 rng(20261128);
  // safetensors: a valid learned-optimizer-sized file with metadata.
  lopt::SafeTensors st;
  st.tensors["network.input.weight"] = torch::randn({4, 39});
  st.tensors["b"] = torch::randn({3}).to(torch::kFloat64);
  st.metadata["lopt_config"] = R"({"type": "mulo"})";
  lopt::write_safetensors(dir.path("ok.safetensors"), st);
  const std::string st_bytes = read_bytes(dir.path("ok.safetensors"));
  for (int k = 0; k < 200; ++k) {
    write_bytes(dir.path("f.safetensors"), mutate_bytes(st_bytes, rng));
    expect_typed([&] { lopt::read_safetensors(dir.path("f.safetensors")); }, "safetensors mutation " + std::to_string(k));
  }
  // ... and structured: a random field of the JSON header replaced by a value of another type.
  {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(st_bytes[static_cast<size_t>(i)]);
    const json header = json::parse(st_bytes.substr(8, n));
    const std::string data = st_bytes.substr(8 + n);
    for (int k = 0; k < 200; ++k) {
      json h = header;
      mutate_json(h, rng);
      std::string text = h.dump();
      std::string out(8, '\0');
      for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
      write_bytes(dir.path("f.safetensors"), out + text + data);
      expect_typed([&] { lopt::read_safetensors(dir.path("f.safetensors")); }, "safetensors header " + h.dump());
    }
  }
  // IDX (plain, not gzip): 5 images of 3 x 4.
  lopt_test::write_idx(dir.path("ok.idx"), {5, 3, 4}, std::vector<uint8_t>(60, 7), false);
  const std::string idx_bytes = read_bytes(dir.path("ok.idx"));
  for (int k = 0; k < 200; ++k) {
    write_bytes(dir.path("f.idx"), mutate_bytes(idx_bytes, rng));
    expect_typed([&] { lopt::read_idx_file(dir.path("f.idx")); }, "IDX mutation " + std::to_string(k));
  }
  // Train configs: random values at random keys, through validation and the optimizer factory.
  const json base = {{"task", {{"width", 16}, {"depth", 2}, {"batch_size", 8}, {"image_size", 4}, {"dataset", "synthetic"},
                               {"parametrization", {{"type", "mup"}, {"base_width", 8}}}}},
                     {"optimizer", {{"type", "adamw"}, {"lr", 1e-3}, {"schedule", {{"type", "warmup_cosine"},
                                                                                    {"warmup_steps", 2}, {"total_steps", 10}}}}},
                     {"steps", 10},
                     {"eval_every", 5},
                     {"seed", 1}};
  for (int k = 0; k < 300; ++k) {
    json cfg = base;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) mutate_json(cfg, rng);
    expect_typed([&] {
      auto resolved = lopt::resolve_train_config(cfg);
      lopt::make_optimizer(resolved["optimizer"]);
    }, "config mutation " + std::to_string(k) + ": " + cfg.dump());
    // The same text through the strict parser, with a byte-level mutation.
    expect_typed([&] { lopt::parse_json_strict(mutate_bytes(cfg.dump(), rng), "fuzz.json"); }, "JSON text mutation");
  }
}
