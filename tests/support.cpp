#include "support.h"

#include "experiments/h5_writer.h"
#include "optimizers/kernels/lopt_cpu.h"

#include "common/errors.h"

#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <sstream>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <random>

namespace lopt_test {

TempDir::TempDir() {
  static int counter = 0;
  dir_ = std::filesystem::temp_directory_path() /
         ("lopt_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  std::filesystem::remove_all(dir_);
  std::filesystem::create_directories(dir_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string TempDir::path(const std::string& name) const { return name.empty() ? dir_.string() : (dir_ / name).string(); }

torch::Tensor tensor_from(const std::vector<float>& values, const std::vector<int64_t>& shape) {
  return torch::tensor(values, torch::kFloat32).reshape(shape).clone();
}

double max_rel_error(const torch::Tensor& a, const torch::Tensor& b, double floor) {
  auto a64 = a.detach().to(torch::kFloat64), b64 = b.detach().to(torch::kFloat64);
  return ((a64 - b64).abs() / b64.abs().clamp_min(floor)).max().item<double>();
}

void write_idx(const std::string& path, const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data, bool gz) {
  std::vector<uint8_t> bytes = {0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims)
    for (int s = 24; s >= 0; s -= 8) bytes.push_back(static_cast<uint8_t>(d >> s));
  bytes.insert(bytes.end(), data.begin(), data.end());
  if (gz) {
    gzFile f = gzopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
}

void write_fake_fashion_mnist(const std::string& dir, int n_train, int n_test, bool gz) {
  std::filesystem::create_directories(dir);
  std::mt19937 rng(7);
  auto write_split = [&](const std::string& prefix, int n) {
    std::vector<uint8_t> imgs(static_cast<size_t>(n) * 28 * 28), labels(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      labels[i] = static_cast<uint8_t>(i % 10);
      // Class-dependent bright square plus noise: learnable, like a tiny image dataset.
      for (int r = 0; r < 28; ++r)
        for (int c = 0; c < 28; ++c) {
          bool on = (r / 7) == (labels[i] % 4) && (c / 7) == (labels[i] / 4 % 4);
          imgs[static_cast<size_t>(i) * 784 + r * 28 + c] = static_cast<uint8_t>((on ? 180 : 0) + rng() % 60);
        }
    }
    std::string sfx = gz ? ".gz" : "";
    write_idx(dir + "/" + prefix + "-images-idx3-ubyte" + sfx, {static_cast<uint32_t>(n), 28, 28}, imgs, gz);
    write_idx(dir + "/" + prefix + "-labels-idx1-ubyte" + sfx, {static_cast<uint32_t>(n)}, labels, gz);
  };
  write_split("train", n_train);
  write_split("t10k", n_test);
}

int run_lopt(const std::string& args, std::string* output, const std::string& env, const std::string& wrapper) {
  std::string cmd = (env.empty() ? "" : "env " + env + " ") + (wrapper.empty() ? "" : wrapper + " ") +
                    std::string(LOPT_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return -1;
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  int status = pclose(pipe);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::filesystem::path repo_root() { return std::filesystem::path(LOPT_TEST_DATA_DIR).parent_path().parent_path(); }

int run_shell(const std::string& cmd) {
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void expect_config_error(const std::function<void(const nlohmann::json&)>& build, const nlohmann::json& config,
                         const std::string& path) {
  try {
    build(config);
    ADD_FAILURE() << "accepted " << config.dump() << " (expected an error at " << path << ")";
  } catch (const lopt::ConfigError& e) {
    EXPECT_EQ(e.path(), path) << e.what();
  }
}

const nlohmann::json& test_data_json(const std::string& name) {
  static std::mutex mutex;
  static std::map<std::string, nlohmann::json> parsed;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = parsed.find(name);
  if (it == parsed.end()) {
    std::ifstream in(std::string(LOPT_TEST_DATA_DIR) + "/" + name);
    it = parsed.emplace(name, nlohmann::json::parse(in)).first;
  }
  return it->second;
}

torch::Tensor from_json(const nlohmann::json& j) {
  auto shape = j.at("shape").get<std::vector<int64_t>>();
  auto data = j.at("data").get<std::vector<float>>();
  return torch::tensor(data, torch::kFloat32).reshape(shape).clone();
}

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  if (b.numel() == 0) return a.numel() == 0 ? 0.0 : 1e9;
  auto b64 = b.to(torch::kFloat64);
  double floor = std::max(1e-3 * b64.abs().max().item<double>(), 1e-30);
  return ((a.to(torch::kFloat64) - b64).abs() / b64.abs().clamp_min(floor)).max().item<double>();
}

double scaled_err(const torch::Tensor& a, const torch::Tensor& b) {
  if (b.numel() == 0) return a.numel() == 0 ? 0.0 : 1e9;
  auto b64 = b.to(torch::kFloat64);
  return (a.to(torch::kFloat64) - b64).abs().max().item<double>() / std::max(b64.abs().max().item<double>(), 1e-30);
}

// The update is read back as p_new - p_old; p_new is stored in float32, so an element whose update
// is tiny next to |p| carries a rounding error of up to 2^-24 |p_new| in either path (6e-8 at |p| = 1,
// 1.7e-3 of an update of 3.5e-5): that part is the representation of p, not the kernel's accuracy.
double update_err(const torch::Tensor& pa, const torch::Tensor& pb, const torch::Tensor& before) {
  auto a = pa.to(torch::kFloat64), b = pb.to(torch::kFloat64), p0 = before.to(torch::kFloat64);
  auto ua = a - p0, ub = b - p0;
  const double floor = std::max(1e-3 * ub.abs().max().item<double>(), 1e-30);
  auto rounding = b.abs() * std::ldexp(1.0, -24) * 2;  // both paths round p_new once
  return ((ua - ub).abs() / (ub.abs().clamp_min(floor) + rounding / 1e-4)).max().item<double>();
}

void for_each_kernel_target(const std::function<void(const std::string&)>& body) {
  const auto targets = lopt::kernels::available_targets();
  ASSERT_GE(targets.size(), 1u);
  struct Restore {
    ~Restore() { lopt::kernels::force_target(0); }
  } restore;
  for (int64_t t : targets) {
    lopt::kernels::force_target(t);
    const std::string name = lopt::kernels::target_name(t);
    ASSERT_EQ(lopt::kernels::dispatched_target(), name) << "dispatch did not follow force_target";
    body(name);
  }
}

}  // namespace lopt_test

namespace lopt_test {
int64_t h5_int_attr(const std::string& path, const std::string& name) {
  return static_cast<int64_t>(lopt::h5_read_double_attr(path, name));
}
std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

nlohmann::json tiny_train_config(const std::string& data_dir, const std::string& output) {
  return {{"task", {{"width", 32}, {"depth", 2}, {"batch_size", 32}, {"image_size", 8}, {"data_dir", data_dir}}},
          {"optimizer", {{"type", "muadam"}, {"lr", 3e-3}}},
          {"steps", 60},
          {"eval_every", 20},
          {"output", output}};
}

std::vector<std::string> markdown_cells(const std::string& table, const std::string& row, size_t from) {
  const auto at = table.find(row, from);
  if (at == std::string::npos) {
    ADD_FAILURE() << "no line with \"" << row << "\" in\n" << table;
    return {};
  }
  std::vector<std::string> out;
  std::stringstream line(table.substr(at, table.find('\n', at) - at));
  for (std::string c; std::getline(line, c, '|');) out.push_back(c);
  return out;
}

}  // namespace lopt_test
