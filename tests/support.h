#pragma once
// Shared helpers for lopt's tests.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace lopt_test {

/// A fresh empty folder under the system temp dir, removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  std::string path(const std::string& name = "") const;

 private:
  std::filesystem::path dir_;
};

/// Float tensor of `shape` from row-major values.
torch::Tensor tensor_from(const std::vector<float>& values, const std::vector<int64_t>& shape);

/// Max over elements of |a - b| / max(|b|, floor).
double max_rel_error(const torch::Tensor& a, const torch::Tensor& b, double floor = 1e-6);

/// Writes an IDX file of unsigned bytes (gzip-compressed when `gz`).
void write_idx(const std::string& path, const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data, bool gz);

/// Writes a small Fashion-MNIST-like folder: n_train / n_test images of side 28 with labels 0..9.
void write_fake_fashion_mnist(const std::string& dir, int n_train, int n_test, bool gz = true);

/// The message of the `E` (e.g. lopt::ConfigError, lopt::IoError) that `fn` throws; a test failure,
/// and "(no <E>)", when it throws none.
template <class E>
std::string thrown_message(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception of the tested type, none was thrown";
  return "(none thrown)";
}

/// Expects `build(config)` to throw lopt::ConfigError whose JSON path is `path`.
void expect_config_error(const std::function<void(const nlohmann::json&)>& build, const nlohmann::json& config,
                         const std::string& path);

/// tests/data/<name> parsed, once per test binary (the golden files are megabytes).
const nlohmann::json& test_data_json(const std::string& name);
/// A golden-file tensor {"shape": [...], "data": [...]} as float32.
torch::Tensor from_json(const nlohmann::json& j);
/// |a - b| relative to max(|b|, 1e-3 * max|b|) elementwise, maximised (1e9 when b is empty and a not).
double rel_err(const torch::Tensor& a, const torch::Tensor& b);
/// max|a - b| / max|b|: for intermediate quantities whose near-zero entries come from cancellation.
double scaled_err(const torch::Tensor& a, const torch::Tensor& b);
/// max |update_a - update_b| / (|update_b| + floor + one float32 rounding of the new parameter), the
/// updates read back as p_new - p_old from `pa`, `pb` and `before` (see support.cpp).
double update_err(const torch::Tensor& pa, const torch::Tensor& pb, const torch::Tensor& before);

/// Runs body(target name) once per Highway target compiled into the fused kernels and supported by
/// this CPU (AVX3, AVX2, SSE4, EMU128 on x86; NEON, EMU128 on ARM), restoring dispatch after.
void for_each_kernel_target(const std::function<void(const std::string&)>& body);

/// Reads an integer attribute of an HDF5 file's root group.
int64_t h5_int_attr(const std::string& path, const std::string& name);

/// Runs the lopt binary with `args` (a shell string); returns the exit code, output in `output`.
/// `env` ("NAME=value ...") is set for that run only; `wrapper` is a command put before the binary
/// (e.g. "timeout -s INT 4").
int run_lopt(const std::string& args, std::string* output = nullptr, const std::string& env = "",
             const std::string& wrapper = "");

/// The repository's root folder (tests read committed results and run its scripts from there).
std::filesystem::path repo_root();

/// Runs a shell command line; returns its exit code (-1 when it did not exit normally).
int run_shell(const std::string& cmd);

/// A text file's contents ("" when it cannot be read).
std::string read_text(const std::string& path);

/// The smallest `lopt train` config that runs the real code path: a μAdam-trained 8x8 MLP
/// (width 32, depth 2, batch 32) for 60 steps on the Fashion-MNIST-like folder `data_dir`,
/// evaluated every 20 steps, written to `output` ("" for none).
nlohmann::json tiny_train_config(const std::string& data_dir, const std::string& output);

/// The '|'-separated cells of the first line of a markdown `table` that contains `row`, searching
/// from `from`: "", then each cell untrimmed (a test failure, and no cells, when there is none).
std::vector<std::string> markdown_cells(const std::string& table, const std::string& row, size_t from = 0);

}  // namespace lopt_test
