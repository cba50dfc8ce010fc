#pragma once
/// Multi-process collectives over LibTorch's c10d: a ProcessGroupGloo (CPU) over a TCPStore,
/// configured from the environment variables torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR,
/// MASTER_PORT), so `torchrun --no-python --nproc-per-node N lopt ...` works, as does starting the
/// N processes by hand. A dead, missing or hung peer becomes a DistributedError naming the
/// operation within the timeout instead of a hang.
#include <torch/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lopt {

/// A collective failed (peer died, unreachable, or timed out). Exit code 3.
class DistributedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct DistributedEnv {
  int64_t rank = 0;
  int64_t world_size = 1;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  /// Seconds a collective (or the rendezvous) may wait for a peer; LOPT_DIST_TIMEOUT overrides.
  double timeout_s = 60;
};

/// The environment's process-group settings, or nullopt when WORLD_SIZE is unset or 1. Throws
/// UsageError naming the variable when one is malformed or missing (RANK without WORLD_SIZE, a
/// RANK outside [0, WORLD_SIZE), a non-numeric MASTER_PORT, ...).
std::optional<DistributedEnv> distributed_env_from_environment();

/// Whether this build has c10d (Gloo) support.
bool distributed_available();

/// One process's membership of the group. Collectives are blocking and in place.
class ProcessGroup {
 public:
  /// Rendezvous with the other WORLD_SIZE - 1 processes (rank 0 hosts the store).
  explicit ProcessGroup(const DistributedEnv& env);
  ~ProcessGroup();
  int64_t rank() const { return env_.rank; }
  int64_t world_size() const { return env_.world_size; }
  /// Sums each tensor over the ranks, in place (contiguous CPU tensors).
  void all_reduce_sum_(std::vector<torch::Tensor>& tensors, const char* what);
  /// Every rank's `t` stacked: [world_size, *t.shape].
  torch::Tensor all_gather(const torch::Tensor& t, const char* what);
  void barrier(const char* what);
  /// Every rank's resolved `config` must equal rank 0's: they are exchanged (all_gather) and, on every
  /// rank alike, a difference is a UsageError (exit 2) naming the first rank and key that differ.
  /// "output" is not compared (only rank 0 writes it); LOPT_RANK_CONFIG_CHECK=0 skips the check.
  void check_same_config(const nlohmann::json& config);

 private:
  struct Impl;
  DistributedEnv env_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lopt
