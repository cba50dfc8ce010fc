#include "tasks/data/image_dataset.h"

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <vector>

#include "common/errors.h"
#include "common/rng.h"

namespace lopt {

namespace {
const char* kPackageHint =
    "the Fashion-MNIST files come from the Debian package dataset-fashion-mnist "
    "(apt-get install dataset-fashion-mnist); point --data-dir or LOPT_DATA_DIR at another folder";

uint32_t be32(const unsigned char* b) {
  return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | uint32_t(b[3]);
}

/// Reads exactly n bytes or throws IoError (truncated file).
void read_exact(gzFile f, const std::string& path, void* dst, size_t n, const std::string& what) {
  size_t done = 0;
  auto* p = static_cast<unsigned char*>(dst);
  while (done < n) {
    unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
    int got = gzread(f, p + done, chunk);
    if (got < 0) {
      int errnum = 0;
      const char* msg = gzerror(f, &errnum);
      throw IoError(path, std::string("corrupt file while reading ") + what + ": " + msg, kPackageHint);
    }
    if (got == 0)
      throw IoError(path,
                    "file is truncated: expected " + std::to_string(n) + " bytes of " + what + ", got " +
                        std::to_string(done),
                    kPackageHint);
    done += static_cast<size_t>(got);
  }
}
}  // namespace

torch::Tensor read_idx_file(const std::string& path) {
  if (!std::filesystem::exists(path)) throw IoError(path, "file not found", kPackageHint);
  gzFile f = gzopen(path.c_str(), "rb");  // zlib reads plain files transparently
  if (!f) throw IoError(path, "cannot open", kPackageHint);
  struct Closer {
    gzFile f;
    ~Closer() { gzclose(f); }
  } closer{f};
  unsigned char header[4];
  read_exact(f, path, header, 4, "the IDX magic number");
  if (header[0] != 0 || header[1] != 0 || header[2] != 0x08)
    throw IoError(path,
                  "wrong magic number: expected an IDX file of unsigned bytes (00 00 08 nd), got " +
                      std::to_string(header[0]) + " " + std::to_string(header[1]) + " " + std::to_string(header[2]) +
                      " " + std::to_string(header[3]),
                  kPackageHint);
  int nd = header[3];
  if (nd < 1 || nd > 4)
    throw IoError(path, "IDX file has " + std::to_string(nd) + " dimensions, expected 1 to 4", kPackageHint);
  std::vector<int64_t> dims(nd);
  int64_t total = 1;
  for (int i = 0; i < nd; ++i) {
    unsigned char b[4];
    read_exact(f, path, b, 4, "the IDX dimensions");
    dims[i] = be32(b);
    if (__builtin_mul_overflow(total, dims[i], &total) || total > (int64_t(1) << 34))
      throw IoError(path, "IDX dimensions are implausibly large", kPackageHint);
  }
  if (total == 0) throw IoError(path, "IDX file holds no data (a dimension is 0)", kPackageHint);
  auto out = torch::empty(dims, torch::kUInt8);
  read_exact(f, path, out.data_ptr(), static_cast<size_t>(total), "the IDX data");
  return out;
}

std::string default_fashion_mnist_dir() {
  const char* env = std::getenv("LOPT_DATA_DIR");
  if (env && *env) return env;
  return "/usr/share/datasets/fashion-mnist";
}

namespace {
std::string find_idx(const std::string& dir, const std::string& stem) {
  for (const char* suffix : {".gz", ""}) {
    auto p = std::filesystem::path(dir) / (stem + std::string(suffix));
    if (std::filesystem::exists(p)) return p.string();
  }
  throw IoError((std::filesystem::path(dir) / (stem + ".gz")).string(), "file not found (also tried without .gz)",
                kPackageHint);
}

torch::Tensor images_to_float(const torch::Tensor& u8, const std::string& path, int64_t image_size) {
  if (u8.dim() != 3)
    throw IoError(path, "expected a 3-D IDX image file (N x rows x cols), got " + std::to_string(u8.dim()) + "-D",
                  kPackageHint);
  auto x = u8.to(torch::kFloat32).div_(255.0f);
  if (image_size != u8.size(1)) {
    x = torch::adaptive_avg_pool2d(x.unsqueeze(1), {image_size, image_size}).squeeze(1);  // area downsampling
  }
  return x.reshape({x.size(0), -1}).contiguous();
}
}  // namespace

std::pair<float, float> pixel_moments(const torch::Tensor& x) {
  const auto c = x.to(torch::kFloat32).contiguous();
  const float* p = c.data_ptr<float>();
  const int64_t n = c.numel();
  if (n < 2) return {n == 1 ? p[0] : 0.0f, 0.0f};
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += p[i];
  const double mean = sum / static_cast<double>(n);
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += (p[i] - mean) * (p[i] - mean);
  return {static_cast<float>(mean), static_cast<float>(std::sqrt(ss / static_cast<double>(n - 1)))};
}

std::shared_ptr<const ImageDataset> load_fashion_mnist(const std::string& dir, int64_t image_size) {
  if (image_size < 1 || image_size > 28)
    throw ConfigError("/task/image_size", "must be between 1 and 28 (e.g. 8, 16, 28), got " + std::to_string(image_size));
  static std::mutex mu;
  static std::map<std::pair<std::string, int64_t>, std::shared_ptr<const ImageDataset>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_pair(dir, image_size);
  if (auto it = cache.find(key); it != cache.end()) return it->second;

  auto ds = std::make_shared<ImageDataset>();
  ds->name = "fashion_mnist";
  ds->image_size = image_size;
  ds->num_classes = 10;
  torch::Tensor xs[2], ys[2];
  const char* prefixes[2] = {"train", "t10k"};
  for (int s = 0; s < 2; ++s) {
    auto ipath = find_idx(dir, std::string(prefixes[s]) + "-images-idx3-ubyte");
    auto lpath = find_idx(dir, std::string(prefixes[s]) + "-labels-idx1-ubyte");
    auto imgs = read_idx_file(ipath);
    auto labels = read_idx_file(lpath);
    if (labels.dim() != 1) throw IoError(lpath, "expected a 1-D IDX label file", kPackageHint);
    if (imgs.dim() >= 1 && labels.size(0) != imgs.size(0))
      throw IoError(lpath,
                    "has " + std::to_string(labels.size(0)) + " labels but " + ipath + " has " +
                        std::to_string(imgs.size(0)) + " images",
                    kPackageHint);
    if (labels.numel() > 0 && labels.max().item<int>() >= 10)
      throw IoError(lpath, "label " + std::to_string(labels.max().item<int>()) + " is out of range 0..9",
                    kPackageHint);
    xs[s] = images_to_float(imgs, ipath, image_size);
    ys[s] = labels.to(torch::kInt64);
  }
  if (xs[0].size(1) != xs[1].size(1)) throw IoError(dir, "train and test images have different sizes", kPackageHint);
  auto [mean, stdv] = pixel_moments(xs[0]);
  if (!(stdv > 0)) stdv = 1.0f;
  ds->train_x = xs[0].sub_(mean).div_(stdv);
  ds->test_x = xs[1].sub_(mean).div_(stdv);
  ds->train_y = ys[0];
  ds->test_y = ys[1];
  cache[key] = ds;
  return ds;
}

std::string default_digits_file() {
  if (const char* env = std::getenv("LOPT_DIGITS_FILE"); env != nullptr && *env != '\0') return env;
  return "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz";
}

std::shared_ptr<const ImageDataset> load_digits(const std::string& path) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const ImageDataset>> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(path); it != cache.end()) return it->second;
  const char* hint =
      "the 8x8 digits come from the Debian package python3-sklearn (apt-get install python3-sklearn); "
      "LOPT_DIGITS_FILE or the task's data_dir may point at another digits.csv.gz";
  if (!std::filesystem::exists(path)) throw IoError(path, "no such file", hint);
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) throw IoError(path, "cannot open", hint);
  std::string text;
  char buf[1 << 16];
  for (;;) {
    const int got = gzread(f, buf, sizeof buf);
    if (got < 0) {
      int errnum = 0;
      const std::string msg = gzerror(f, &errnum);
      gzclose(f);
      throw IoError(path, "corrupt file: " + msg, hint);
    }
    if (got == 0) break;
    text.append(buf, static_cast<size_t>(got));
  }
  gzclose(f);
  std::vector<float> pixels;
  std::vector<int64_t> labels;
  size_t pos = 0;
  int64_t line = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    ++line;
    std::string row = text.substr(pos, end - pos);
    pos = end + 1;
    if (!row.empty() && row.back() == '\r') row.pop_back();
    if (row.empty()) continue;
    std::vector<double> v;
    size_t p = 0;
    while (p <= row.size()) {
      size_t comma = row.find(',', p);
      if (comma == std::string::npos) comma = row.size();
      const std::string field = row.substr(p, comma - p);
      char* stop = nullptr;
      const double x = std::strtod(field.c_str(), &stop);
      if (field.empty() || stop == nullptr || *stop != '\0')
        throw IoError(path, "line " + std::to_string(line) + ": \"" + field + "\" is not a number", hint);
      v.push_back(x);
      p = comma + 1;
    }
    if (v.size() != 65)
      throw IoError(path, "line " + std::to_string(line) + " has " + std::to_string(v.size()) +
                              " values, expected 65 (64 pixels and a label)", hint);
    for (int k = 0; k < 64; ++k) {
      if (v[static_cast<size_t>(k)] < 0 || v[static_cast<size_t>(k)] > 16)
        throw IoError(path, "line " + std::to_string(line) + ": pixel " + std::to_string(k) + " is " +
                                std::to_string(v[static_cast<size_t>(k)]) + ", outside 0..16", hint);
      pixels.push_back(static_cast<float>(v[static_cast<size_t>(k)] / 16.0));
    }
    const double y = v[64];
    if (y != std::floor(y) || y < 0 || y > 9)
      throw IoError(path, "line " + std::to_string(line) + ": label " + std::to_string(y) + " is not one of 0..9", hint);
    labels.push_back(static_cast<int64_t>(y));
  }
  const int64_t n = static_cast<int64_t>(labels.size());
  constexpr int64_t kTrain = 1500;
  if (n <= kTrain)
    throw IoError(path, "has " + std::to_string(n) + " images, expected more than " + std::to_string(kTrain) +
                            " (python3-sklearn's file has 1,797)", hint);
  auto x = torch::tensor(pixels).reshape({n, 64});
  auto y = torch::tensor(labels, torch::kInt64);
  auto ds = std::make_shared<ImageDataset>();
  ds->name = "digits";
  ds->image_size = 8;
  ds->num_classes = 10;
  auto train = x.slice(0, 0, kTrain);
  auto [mean, stdv] = pixel_moments(train);
  if (!(stdv > 0)) stdv = 1.0f;
  ds->train_x = train.sub(mean).div_(stdv).contiguous();
  ds->test_x = x.slice(0, kTrain).sub(mean).div_(stdv).contiguous();
  ds->train_y = y.slice(0, 0, kTrain).contiguous();
  ds->test_y = y.slice(0, kTrain).contiguous();
  cache[path] = ds;
  return ds;
}

namespace {
/// A fixed permutation of 0..n-1 (std::mt19937_64 with `seed`, Fisher–Yates: the same on every machine).
std::vector<int64_t> fixed_permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  return perm;
}

/// The stand-ins derived from Fashion-MNIST (make_image_source documents them).
std::shared_ptr<const ImageDataset> derived_fashion_mnist(const std::string& name, const ImageDataset& base) {
  auto ds = std::make_shared<ImageDataset>(base);
  ds->name = name;
  if (name == "fashion_mnist_pixperm") {
    const auto perm = torch::tensor(fixed_permutation(base.input_dim(), 0x70697870ULL), torch::kInt64);
    ds->train_x = base.train_x.index_select(1, perm).contiguous();
    ds->test_x = base.test_x.index_select(1, perm).contiguous();
  } else {  // fashion_mnist_classperm
    const auto perm = torch::tensor(fixed_permutation(base.num_classes, 0x636c6173ULL), torch::kInt64);
    ds->train_x = base.train_x.neg();
    ds->test_x = base.test_x.neg();
    ds->train_y = perm.index_select(0, base.train_y);
    ds->test_y = perm.index_select(0, base.test_y);
  }
  return ds;
}
}  // namespace

const std::vector<std::string>& image_dataset_names() {
  static const std::vector<std::string> names = {"fashion_mnist", "digits", "fashion_mnist_pixperm",
                                                 "fashion_mnist_classperm", "synthetic"};
  return names;
}

std::shared_ptr<const ImageDataset> make_synthetic_dataset(int64_t n_train, int64_t n_test, int64_t image_size,
                                                           int64_t num_classes, uint64_t seed) {
  auto gen = make_generator(seed);
  auto ds = std::make_shared<ImageDataset>();
  ds->name = "synthetic";
  ds->image_size = image_size;
  ds->num_classes = num_classes;
  int64_t d = image_size * image_size;
  auto teacher = torch::randn({d, num_classes}, gen);
  auto make = [&](int64_t n, torch::Tensor& x, torch::Tensor& y) {
    x = torch::randn({n, d}, gen);
    y = x.matmul(teacher).argmax(1);
  };
  make(n_train, ds->train_x, ds->train_y);
  make(n_test, ds->test_x, ds->test_y);
  return ds;
}

const std::vector<torch::Tensor>& ImageSource::dirichlet_partition(Split split, const Shard& shard) const {
  char key[160];
  std::snprintf(key, sizeof key, "%s/%lld/%.17g/%llu", to_string(split).c_str(), static_cast<long long>(shard.world_size),
                shard.dirichlet_alpha, static_cast<unsigned long long>(shard.partition_seed));
  std::lock_guard<std::mutex> lock(partitions_mutex_);
  auto it = partitions_.find(key);
  if (it != partitions_.end()) return it->second;
  const auto y = data_->y(split).contiguous();
  const int64_t K = shard.world_size;
  std::mt19937_64 rng(shard.partition_seed ^ 0x5d1c4a7e9b3f2c61ULL);
  std::gamma_distribution<double> gamma(shard.dirichlet_alpha, 1.0);
  std::vector<std::vector<int64_t>> parts(static_cast<size_t>(K));
  for (int64_t c = 0; c < data_->num_classes; ++c) {
    std::vector<int64_t> members;
    for (int64_t i = 0; i < y.numel(); ++i)
      if (y.data_ptr<int64_t>()[i] == c) members.push_back(i);
    std::shuffle(members.begin(), members.end(), rng);
    std::vector<double> q(static_cast<size_t>(K));
    double total = 0;
    for (auto& v : q) total += (v = gamma(rng));
    // Contiguous chunks of the shuffled class in proportions q / sum(q).
    double cum = 0;
    size_t begin = 0;
    for (int64_t k = 0; k < K; ++k) {
      cum += q[static_cast<size_t>(k)] / std::max(total, 1e-300);
      const size_t end = k + 1 == K ? members.size() : std::min(members.size(), static_cast<size_t>(std::llround(cum * static_cast<double>(members.size()))));
      for (size_t i = begin; i < end; ++i) parts[static_cast<size_t>(k)].push_back(members[i]);
      begin = std::max(begin, end);
    }
  }
  std::vector<torch::Tensor> out;
  for (auto& p : parts) {
    std::sort(p.begin(), p.end());
    out.push_back(torch::tensor(p, torch::kInt64));
  }
  return partitions_.emplace(key, std::move(out)).first->second;
}

Batch ImageSource::sample(Split split, int64_t batch_size, at::Generator& gen, Shard shard) const {
  check_split(split);
  const auto& xs = data_->x(split);
  torch::Tensor idx;
  if (shard.dirichlet_alpha > 0 && shard.world_size > 1) {
    const auto& mine = dirichlet_partition(split, shard).at(static_cast<size_t>(shard.rank));
    TORCH_CHECK(mine.numel() > 0, "the Dirichlet(", shard.dirichlet_alpha, ") split gave worker ", shard.rank, " of ",
                shard.world_size, " no examples: use a larger local_sgd.dirichlet_alpha or another partition_seed");
    idx = mine.index_select(0, torch::randint(mine.numel(), {batch_size}, gen, torch::kInt64));
  } else {
    idx = sample_shard_indices(xs.size(0), batch_size, gen, shard);
  }
  return {{{"x", xs.index_select(0, idx)}, {"y", data_->y(split).index_select(0, idx)}}};
}

int64_t ImageSource::num_examples(Split split) const {
  check_split(split);
  return data_->x(split).size(0);
}

Batch ImageSource::examples(Split split, int64_t begin, int64_t end) const {
  check_split(split);
  return {{{"x", data_->x(split).slice(0, begin, end)}, {"y", data_->y(split).slice(0, begin, end)}}};
}

nlohmann::json ImageSource::hyperparams() const {
  return {{"type", "images"}, {"dataset", data_->name}, {"image_size", data_->image_size}, {"classes", data_->num_classes}};
}

std::shared_ptr<const ImageSource> make_image_source(const std::string& dataset, const std::string& data_dir,
                                                     int64_t image_size) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<const ImageSource>> cache;
  const std::string key = dataset + "\n" + data_dir + "\n" + std::to_string(image_size);
  std::lock_guard<std::mutex> lock(mu);
  if (auto hit = cache[key].lock()) return hit;
  std::shared_ptr<const ImageDataset> data;
  if (dataset == "synthetic") {
    data = make_synthetic_dataset(4096, 1024, image_size, 10, 1234);
  } else if (dataset == "digits") {
    if (image_size != 8) throw ConfigError("/task/image_size", "the digits are 8x8 images: image_size must be 8, got " + std::to_string(image_size));
    data = load_digits(data_dir.empty() ? default_digits_file() : (std::filesystem::path(data_dir) / "digits.csv.gz").string());
  } else {
    data = load_fashion_mnist(data_dir.empty() ? default_fashion_mnist_dir() : data_dir, image_size);
    if (dataset != "fashion_mnist") data = derived_fashion_mnist(dataset, *data);
  }
  auto source = std::make_shared<const ImageSource>(std::move(data));
  cache[key] = source;
  return source;
}

}  // namespace lopt
