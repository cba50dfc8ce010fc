#include "tasks/data/data_source.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "common/errors.h"
#include "common/rng.h"

namespace lopt {

std::string to_string(Split s) {
  switch (s) {
    case Split::train: return "train";
    case Split::validation: return "validation";
    case Split::test: return "test";
  }
  return "?";
}

Split split_from_string(const std::string& s, const std::string& path) {
  if (s == "train") return Split::train;
  if (s == "validation") return Split::validation;
  if (s == "test") return Split::test;
  throw ConfigError(path, "unknown split \"" + s + "\" (valid: train, validation, test)");
}

const torch::Tensor& Batch::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    std::string keys;
    for (const auto& [k, v] : tensors) keys += (keys.empty() ? "" : ", ") + k;
    throw std::invalid_argument("batch has no tensor \"" + name + "\" (it has: " + keys +
                                "); the task and the data source do not match");
  }
  return it->second;
}

int64_t Batch::size(bool stacked) const {
  TORCH_CHECK(!tensors.empty(), "Batch::size: empty batch");
  return tensors.begin()->second.size(stacked ? 1 : 0);
}

Batch Batch::slice(int64_t begin, int64_t end) const {
  Batch b;
  for (const auto& [k, v] : tensors) b.tensors[k] = v.slice(0, begin, end);
  return b;
}

Batch Batch::member(int64_t p) const {
  Batch b;
  for (const auto& [k, v] : tensors) b.tensors[k] = v[p];
  return b;
}

Batch Batch::stack(const std::vector<Batch>& batches) {
  TORCH_CHECK(!batches.empty(), "Batch::stack: no batches");
  Batch out;
  for (const auto& [k, v] : batches.front().tensors) {
    std::vector<torch::Tensor> parts;
    for (const auto& b : batches) parts.push_back(b.at(k));
    out.tensors[k] = torch::stack(parts);
  }
  return out;
}

Batch Batch::to(const torch::Device& device) const {
  Batch out;
  for (const auto& [k, v] : tensors) out.tensors[k] = v.device() == device ? v : v.to(device, /*non_blocking=*/true);
  return out;
}

bool DataSource::has_split(Split s) const {
  for (auto x : splits())
    if (x == s) return true;
  return false;
}

Split DataSource::report_split() const { return has_split(Split::test) ? Split::test : Split::validation; }

void DataSource::check_split(Split s) const {
  if (has_split(s)) return;
  std::string names;
  for (auto x : splits()) names += (names.empty() ? "" : ", ") + to_string(x);
  throw ConfigError("/split", "this data source has no " + to_string(s) + " split (it has: " + names + ")");
}

torch::Tensor sample_shard_indices(int64_t n, int64_t batch_size, at::Generator& gen, Shard shard) {
  TORCH_CHECK(shard.world_size >= 1 && shard.rank >= 0 && shard.rank < shard.world_size, "invalid shard ", shard.rank,
              " of ", shard.world_size);
  if (shard.world_size == 1) return torch::randint(n, {batch_size}, gen, torch::kInt64);
  const int64_t count = (n - shard.rank + shard.world_size - 1) / shard.world_size;
  TORCH_CHECK(count > 0, "shard ", shard.rank, " of ", shard.world_size, " is empty (", n, " examples)");
  return torch::randint(count, {batch_size}, gen, torch::kInt64).mul_(shard.world_size).add_(shard.rank);
}

BatchStream::BatchStream(std::shared_ptr<const DataSource> source, Split split, int64_t batch_size, uint64_t seed,
                         Shard shard)
    : source_(std::move(source)), split_(split), batch_size_(batch_size), shard_(shard), gen_(make_generator(seed)) {}

Batch BatchStream::next() {
  ++position_;
  return source_->sample(split_, batch_size_, gen_, shard_);
}

nlohmann::json BatchStream::state() {
  static const char* hex = "0123456789abcdef";
  std::string s = generator_state(gen_), h;
  h.reserve(2 * s.size());
  for (unsigned char c : s) {
    h.push_back(hex[c >> 4]);
    h.push_back(hex[c & 15]);
  }
  return {{"position", position_}, {"generator", h}};
}

void BatchStream::restore(const nlohmann::json& state) {
  const std::string h = state.at("generator").get<std::string>();
  if (h.size() % 2 != 0) throw std::invalid_argument("BatchStream::restore: odd-length generator state");
  std::string s(h.size() / 2, '\0');
  auto nib = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(nib(h[2 * i]) * 16 + nib(h[2 * i + 1]));
  set_generator_state(gen_, s);
  position_ = state.at("position").get<int64_t>();
}

}  // namespace lopt

namespace lopt {

MixtureSource::MixtureSource(std::vector<std::shared_ptr<const DataSource>> sources, std::vector<double> fractions)
    : sources_(std::move(sources)), fractions_(std::move(fractions)) {
  TORCH_CHECK(!sources_.empty() && sources_.size() == fractions_.size(), "MixtureSource: one fraction per source");
  double total = 0;
  for (double f : fractions_) {
    TORCH_CHECK(f >= 0 && std::isfinite(f), "MixtureSource: fractions must be >= 0");
    total += f;
  }
  TORCH_CHECK(std::abs(total - 1.0) < 1e-9, "MixtureSource: fractions must sum to 1, got ", total);
}

std::vector<int64_t> MixtureSource::counts(int64_t batch_size) const {
  std::vector<int64_t> n(fractions_.size());
  std::vector<std::pair<double, size_t>> rem;
  int64_t assigned = 0;
  for (size_t i = 0; i < fractions_.size(); ++i) {
    const double exact = fractions_[i] * static_cast<double>(batch_size);
    n[i] = static_cast<int64_t>(std::floor(exact));
    assigned += n[i];
    rem.push_back({exact - static_cast<double>(n[i]), i});
  }
  std::stable_sort(rem.begin(), rem.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t j = 0; assigned < batch_size; ++j, ++assigned) n[rem[j % rem.size()].second] += 1;
  return n;
}

Batch MixtureSource::sample(Split split, int64_t batch_size, at::Generator& gen, Shard shard) const {
  const auto n = counts(batch_size);
  std::map<std::string, std::vector<torch::Tensor>> parts;
  for (size_t i = 0; i < sources_.size(); ++i) {
    if (n[i] == 0) continue;
    auto b = sources_[i]->sample(split, n[i], gen, shard);
    for (auto& [k, t] : b.tensors) parts[k].push_back(t);
  }
  Batch out;
  for (auto& [k, v] : parts) out.tensors[k] = torch::cat(v);
  return out;
}

nlohmann::json MixtureSource::hyperparams() const {
  nlohmann::json s = nlohmann::json::array();
  for (const auto& src : sources_) s.push_back(src->hyperparams());
  return {{"type", "mixture"}, {"sources", s}, {"fractions", fractions_}};
}

}  // namespace lopt
