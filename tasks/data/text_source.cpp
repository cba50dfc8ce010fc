#include "tasks/data/text_source.h"

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>

#include "common/config.h"
#include "common/errors.h"

namespace lopt {

namespace fs = std::filesystem;

namespace {
constexpr int64_t kChunk = 1024;
const char* kCorpora = "english, german, code";

bool is_code_file(const fs::path& p) {
  static const char* exts[] = {".h", ".hh", ".hpp", ".hxx", ".inc", ".c", ".cc", ".cpp"};
  const auto e = p.extension().string();
  return std::any_of(std::begin(exts), std::end(exts), [&](const char* x) { return e == x; });
}

/// Regular files of a corpus, sorted by path.
std::vector<fs::path> corpus_files(const std::string& corpus, const fs::path& dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  if (corpus == "code") {
    for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
      if (it->is_regular_file(ec) && !it->is_symlink(ec) && is_code_file(it->path())) files.push_back(it->path());
  } else {
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
      const auto ext = it->path().extension().string();
      if (it->is_regular_file(ec) && !it->is_symlink(ec) && ext != ".dat" && ext != ".u8") files.push_back(it->path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}
}  // namespace

std::string text_corpus_dir(const std::string& corpus) {
  if (corpus == "english") return "/usr/share/games/fortunes";
  if (corpus == "german") return "/usr/share/games/fortunes/de";
  if (corpus == "code") return "/usr/include";
  throw ConfigError("/corpus", "unknown corpus \"" + corpus + "\" (valid: " + kCorpora + ")");
}

std::string text_corpus_package(const std::string& corpus) {
  if (corpus == "english") return "fortunes";
  if (corpus == "german") return "fortunes-de";
  return "libc6-dev (or any package with C/C++ headers)";
}

TextSourceConfig TextSourceConfig::from_json(const nlohmann::json& j, const std::string& path) {
  ConfigReader r(j, path);
  TextSourceConfig c;
  c.corpus = r.get<std::string>("corpus", c.corpus);
  c.dir = r.get<std::string>("dir", c.dir);
  c.context = r.get<int64_t>("context", c.context);
  c.max_bytes = r.get<int64_t>("max_bytes", c.max_bytes);
  c.validation_every = r.get<int64_t>("validation_every", c.validation_every);
  r.finish();
  config_check(c.corpus == "english" || c.corpus == "german" || c.corpus == "code", r.path_of("corpus"),
               "unknown corpus \"" + c.corpus + "\" (valid: " + kCorpora + ")");
  config_check(c.context >= 1 && c.context <= 65536, r.path_of("context"), "must be in 1..65536, got " + std::to_string(c.context));
  config_check(c.max_bytes >= 4 * kChunk, r.path_of("max_bytes"), "must be >= 4096, got " + std::to_string(c.max_bytes));
  config_check(c.validation_every >= 2, r.path_of("validation_every"), "must be >= 2, got " + std::to_string(c.validation_every));
  return c;
}

nlohmann::json TextSourceConfig::to_json() const {
  return {{"corpus", corpus}, {"dir", dir}, {"context", context}, {"max_bytes", max_bytes}, {"validation_every", validation_every}};
}

std::shared_ptr<const TextCorpus> load_text_corpus(const TextSourceConfig& c) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const TextCorpus>> cache;
  const fs::path dir = c.dir.empty() ? text_corpus_dir(c.corpus) : c.dir;
  const std::string key = c.corpus + "\n" + dir.string() + "\n" + std::to_string(c.max_bytes) + "\n" + std::to_string(c.validation_every);
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(key); it != cache.end()) return it->second;

  const std::string hint = "the " + c.corpus + " corpus comes from the Debian package " + text_corpus_package(c.corpus) +
                           " (apt-get install " + (c.corpus == "code" ? std::string("libc6-dev") : text_corpus_package(c.corpus)) +
                           "), or set the task's \"dir\" to another folder";
  if (!fs::is_directory(dir)) throw IoError(dir.string(), "corpus folder not found", hint);
  std::string text;
  int64_t files = 0;
  for (const auto& f : corpus_files(c.corpus, dir)) {
    if (static_cast<int64_t>(text.size()) >= c.max_bytes) break;
    std::ifstream in(f, std::ios::binary);
    if (!in) continue;
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (content.empty()) continue;
    text += content;
    if (text.back() != '\n') text += '\n';
    ++files;
  }
  if (static_cast<int64_t>(text.size()) > c.max_bytes) text.resize(static_cast<size_t>(c.max_bytes));
  const int64_t min_bytes = (c.validation_every + 1) * kChunk;
  if (static_cast<int64_t>(text.size()) < min_bytes)
    throw IoError(dir.string(),
                  "the " + c.corpus + " corpus has " + std::to_string(text.size()) + " bytes in " + std::to_string(files) +
                      " files; at least " + std::to_string(min_bytes) + " are needed",
                  hint);
  std::string train, validation;
  for (size_t off = 0, k = 0; off < text.size(); off += kChunk, ++k) {
    auto part = text.substr(off, kChunk);
    (static_cast<int64_t>(k % static_cast<size_t>(c.validation_every)) == c.validation_every - 1 ? validation : train) += part;
  }
  auto to_tensor = [](const std::string& s) {
    auto t = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
    std::memcpy(t.data_ptr(), s.data(), s.size());
    return t;
  };
  auto corpus = std::make_shared<TextCorpus>();
  corpus->name = c.corpus;
  corpus->train = to_tensor(train);
  corpus->validation = to_tensor(validation);
  corpus->files = files;
  cache[key] = corpus;
  return corpus;
}

TextSource::TextSource(TextSourceConfig config) : config_(std::move(config)), corpus_(load_text_corpus(config_)) {
  for (Split s : splits())
    if (bytes(s).numel() < config_.context + 1)
      throw IoError(config_.dir.empty() ? text_corpus_dir(config_.corpus) : config_.dir,
                    "the " + to_string(s) + " split (" + std::to_string(bytes(s).numel()) + " bytes) is shorter than one window of " +
                        std::to_string(config_.context + 1) + " bytes",
                    "lower the context or raise max_bytes");
}

const torch::Tensor& TextSource::bytes(Split split) const {
  check_split(split);
  return split == Split::train ? corpus_->train : corpus_->validation;
}

Batch TextSource::sample(Split split, int64_t batch_size, at::Generator& gen, Shard shard) const {
  const auto& b = bytes(split);
  TORCH_CHECK(shard.world_size >= 1 && shard.rank >= 0 && shard.rank < shard.world_size, "invalid shard ", shard.rank,
              " of ", shard.world_size);
  // Shard r reads the r-th contiguous part of the split.
  const int64_t n = b.numel(), lo = shard.rank * n / shard.world_size, hi = (shard.rank + 1) * n / shard.world_size;
  const int64_t window = config_.context + 1, starts = hi - lo - window + 1;
  TORCH_CHECK(starts >= 1, "TextSource: shard ", shard.rank, " of ", shard.world_size, " holds ", hi - lo,
              " bytes, less than one window of ", window);
  auto start = torch::randint(starts, {batch_size, 1}, gen, torch::kInt64).add_(lo);
  auto idx = start + torch::arange(window, torch::kInt64).unsqueeze(0);
  return {{{"tokens", b.index({idx}).to(torch::kInt64)}}};
}

int64_t TextSource::num_examples(Split split) const { return (bytes(split).numel() - 1) / config_.context; }

Batch TextSource::examples(Split split, int64_t begin, int64_t end) const {
  const auto& b = bytes(split);
  auto start = torch::arange(begin, end, torch::kInt64).mul_(config_.context).unsqueeze(1);
  auto idx = start + torch::arange(config_.context + 1, torch::kInt64).unsqueeze(0);
  return {{{"tokens", b.index({idx}).to(torch::kInt64)}}};
}

nlohmann::json TextSource::hyperparams() const {
  auto j = config_.to_json();
  j["type"] = "text";
  return j;
}

}  // namespace lopt
