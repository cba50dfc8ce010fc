#pragma once
/// The device a run computes on. Tasks create their parameters on the host (same random draws on
/// every device) and move them there; batches move there as a task reads them; optimizer state
/// follows the parameters. Set once per run (train, compare, sweep, meta-train) from the config's
/// "device" key or --device.
#include <torch/types.h>

#include <string>

namespace lopt {

/// "cpu", "cuda" or "cuda:N" at JSON path `path`. Throws ConfigError naming what is missing: a
/// CPU-only LibTorch (Debian's), lopt built without -DLOPT_CUDA, no visible GPU, or an index past
/// the GPUs there are.
torch::Device parse_device(const std::string& name, const std::string& path);

/// The current run's device (CPU unless a DeviceScope says otherwise).
torch::Device compute_device();

/// Sets compute_device() for its lifetime (process-wide; runs are sequential within a process).
class DeviceScope {
 public:
  explicit DeviceScope(torch::Device device);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  torch::Device previous_;
};

/// `t` on compute_device() (itself when already there).
inline torch::Tensor on_compute_device(const torch::Tensor& t) {
  const auto d = compute_device();
  return !t.defined() || t.device() == d ? t : t.to(d);
}

}  // namespace lopt
