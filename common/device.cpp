#include "common/device.h"

#include <torch/cuda.h>

#include <atomic>

#include "common/errors.h"

namespace lopt {
namespace {
std::atomic<int> g_type{static_cast<int>(torch::kCPU)};
std::atomic<int> g_index{-1};
}  // namespace

torch::Device parse_device(const std::string& name, const std::string& path) {
  if (name == "cpu") return torch::kCPU;
  if (name != "cuda" && name.rfind("cuda:", 0) != 0)
    throw ConfigError(path, "unknown device \"" + name + "\": give \"cpu\", \"cuda\" or \"cuda:N\"");
  int index = 0;
  if (name.size() > 5) {
    const std::string digits = name.substr(5);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 3)
      throw ConfigError(path, "device \"" + name + "\": the GPU index must be a number, e.g. \"cuda:0\"");
    index = std::stoi(digits);
  }
#if !defined(LOPT_TORCH_CUDA)
  (void)index;
  throw ConfigError(path, "device \"" + name + "\": this lopt is built against a CPU-only LibTorch (Debian's libtorch-dev "
                    "has no CUDA); rebuild against a CUDA-enabled LibTorch with -DLOPT_CUDA=ON (DEVELOPERS.md, GPU builds), "
                    "or use \"cpu\"");
#else
#if !defined(LOPT_WITH_CUDA)
  throw ConfigError(path, "device \"" + name + "\": this lopt was built without -DLOPT_CUDA (no CUDA kernels)");
#endif
  if (!torch::cuda::is_available())
    throw ConfigError(path, "device \"" + name + "\": LibTorch sees no CUDA device (no driver or GPU, or "
                      "CUDA_VISIBLE_DEVICES hides them; nvidia-smi lists what the driver sees)");
  const auto count = static_cast<int>(torch::cuda::device_count());
  if (index >= count)
    throw ConfigError(path, "device \"" + name + "\": only " + std::to_string(count) + " CUDA device(s) visible (cuda:0.." +
                      std::to_string(count - 1) + ")");
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
#endif
}

torch::Device compute_device() {
  return torch::Device(static_cast<torch::DeviceType>(g_type.load()), static_cast<c10::DeviceIndex>(g_index.load()));
}

DeviceScope::DeviceScope(torch::Device device) : previous_(compute_device()) {
  g_type = static_cast<int>(device.type());
  g_index = device.index();
}

DeviceScope::~DeviceScope() {
  g_type = static_cast<int>(previous_.type());
  g_index = previous_.index();
}

}  // namespace lopt
