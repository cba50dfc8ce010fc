#include "common/distributed.h"
#include "common/signals.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <string>

#include "common/errors.h"
#include "common/json_diff.h"

#ifdef LOPT_WITH_C10D
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace lopt {

namespace {
std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

int64_t env_int(const char* name, const std::string& value, int64_t lo, int64_t hi) {
  size_t pos = 0;
  int64_t x = 0;
  try {
    x = std::stoll(value, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos != value.size() || x < lo || x > hi)
    throw UsageError(std::string("environment variable ") + name + "=" + value + " must be an integer in [" + std::to_string(lo) +
                     ", " + std::to_string(hi) + "]");
  return x;
}
}  // namespace

std::optional<DistributedEnv> distributed_env_from_environment() {
  const auto world = env("WORLD_SIZE");
  if (!world) {
    if (env("RANK") && *env("RANK") != "0")
      throw UsageError("RANK is set but WORLD_SIZE is not: set both (as torchrun does), or neither for one process");
    return std::nullopt;
  }
  DistributedEnv e;
  e.world_size = env_int("WORLD_SIZE", *world, 1, 1 << 16);
  if (e.world_size == 1) return std::nullopt;
  const auto rank = env("RANK");
  if (!rank) throw UsageError("WORLD_SIZE=" + *world + " but RANK is not set: give each process RANK=0.." + std::to_string(e.world_size - 1));
  e.rank = env_int("RANK", *rank, 0, e.world_size - 1);
  if (auto a = env("MASTER_ADDR")) e.master_addr = *a;
  if (auto p = env("MASTER_PORT")) e.master_port = env_int("MASTER_PORT", *p, 1, 65535);
  if (auto t = env("LOPT_DIST_TIMEOUT")) {
    char* end = nullptr;
    e.timeout_s = std::strtod(t->c_str(), &end);
    if (end == t->c_str() || *end != '\0' || !(e.timeout_s > 0))
      throw UsageError("LOPT_DIST_TIMEOUT=" + *t + " must be a positive number of seconds");
  }
  return e;
}

#ifdef LOPT_WITH_C10D

bool distributed_available() { return true; }

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

namespace {
std::string describe(const DistributedEnv& e, const char* what, const std::string& why) {
  return std::string("rank ") + std::to_string(e.rank) + "/" + std::to_string(e.world_size) + ": " + what + " failed: " + why +
         " (a peer process may have died or hung, or " + e.master_addr + ":" + std::to_string(e.master_port) +
         " is unreachable; collectives wait " + std::to_string(static_cast<int64_t>(e.timeout_s)) + " s, set by LOPT_DIST_TIMEOUT)";
}

template <class F>
auto guarded(const DistributedEnv& e, const char* what, F&& f) {
  try {
    return f();
  } catch (const DistributedError&) {
    throw;
  } catch (const std::exception& ex) {
    std::string why = ex.what();
    if (auto nl = why.find('\n'); nl != std::string::npos) why.resize(nl);
    // A signal that broke a blocking call (the rendezvous' connect / poll) is the user stopping the
    // run, not a network failure: exit 128 + signal, as every interrupted command does.
    if (const int sig = interrupted())
      throw Interrupted(sig, "rank " + std::to_string(e.rank) + "/" + std::to_string(e.world_size) + ": " + what +
                                 " interrupted by " + signal_name(sig) + " (" + why +
                                 "); the other ranks stop when their next collective times out");
    throw DistributedError(describe(e, what, why));
  }
}
}  // namespace

namespace {
/// This process's rank, for the terminate handler below.
DistributedEnv g_terminate_env;

/// Gloo checks its wire protocol on its own I/O thread and throws there (gloo::EnforceNotMet, e.g.
/// when ranks reduce tensors of different shapes); nothing can catch that, so the process would abort
/// (SIGABRT). This handler turns it into lopt's exit code for a failed collective (3) with a message.
[[noreturn]] void terminate_as_distributed_error() {
  std::string what = "an exception outside any handler";
  if (auto e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
    }
  }
  if (auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
  std::fprintf(stderr,
               "lopt: error: rank %lld/%lld: a collective failed inside Gloo: %s (do all ranks run the same config? "
               "ranks whose tensors differ in shape cannot be reduced together)\n",
               static_cast<long long>(g_terminate_env.rank), static_cast<long long>(g_terminate_env.world_size), what.c_str());
  std::fflush(stderr);
  std::_Exit(3);
}
}  // namespace

ProcessGroup::ProcessGroup(const DistributedEnv& e) : env_(e), impl_(std::make_unique<Impl>()) {
  g_terminate_env = e;
  std::set_terminate(terminate_as_distributed_error);
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(e.timeout_s * 1000));
  guarded(env_, "rendezvous", [&] {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(e.master_port);
    so.isServer = e.rank == 0;
    so.numWorkers = static_cast<size_t>(e.world_size);
    so.waitWorkers = true;
    so.timeout = timeout;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(e.master_addr, so);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, static_cast<int>(e.rank),
                                                            static_cast<int>(e.world_size), opts);
    return 0;
  });
}

ProcessGroup::~ProcessGroup() = default;

void ProcessGroup::all_reduce_sum_(std::vector<torch::Tensor>& tensors, const char* what) {
  guarded(env_, what, [&] {
    // One flat buffer per dtype (Gloo reduces a list of same-shaped tensors, one per device).
    std::map<c10::ScalarType, std::vector<size_t>> by_type;
    for (size_t i = 0; i < tensors.size(); ++i) by_type[tensors[i].scalar_type()].push_back(i);
    for (const auto& [type, idx] : by_type) {
      std::vector<torch::Tensor> flat;
      for (size_t i : idx) flat.push_back(tensors[i].reshape({-1}));
      std::vector<torch::Tensor> buf = {torch::cat(flat)};
      impl_->pg->allreduce(buf)->wait();
      int64_t off = 0;
      for (size_t i : idx) {
        const int64_t n = tensors[i].numel();
        tensors[i].copy_(buf[0].narrow(0, off, n).view(tensors[i].sizes()));
        off += n;
      }
    }
    return 0;
  });
}

torch::Tensor ProcessGroup::all_gather(const torch::Tensor& t, const char* what) {
  return guarded(env_, what, [&] {
    std::vector<torch::Tensor> in = {t.contiguous()};
    std::vector<std::vector<torch::Tensor>> out(1);
    for (int64_t r = 0; r < env_.world_size; ++r) out[0].push_back(torch::empty_like(in[0]));
    impl_->pg->allgather(out, in)->wait();
    return torch::stack(out[0]);
  });
}

void ProcessGroup::barrier(const char* what) {
  guarded(env_, what, [&] {
    impl_->pg->barrier()->wait();
    return 0;
  });
}

#else

bool distributed_available() { return false; }

struct ProcessGroup::Impl {};

ProcessGroup::ProcessGroup(const DistributedEnv& e) : env_(e) {
  throw UsageError("this lopt was built without c10d (Gloo) support: install libgloo-dev and reconfigure "
                   "(cmake -DLOPT_DISTRIBUTED=ON), or run with WORLD_SIZE unset");
}
ProcessGroup::~ProcessGroup() = default;
void ProcessGroup::all_reduce_sum_(std::vector<torch::Tensor>&, const char*) {}
torch::Tensor ProcessGroup::all_gather(const torch::Tensor& t, const char*) { return t.unsqueeze(0); }
void ProcessGroup::barrier(const char*) {}

#endif

void ProcessGroup::check_same_config(const nlohmann::json& config) {
  if (world_size() <= 1) return;
  if (const char* v = std::getenv("LOPT_RANK_CONFIG_CHECK"); v && std::string(v) == "0") return;
  auto compared = config;
  compared.erase("output");  // only rank 0 writes it
  const std::string mine = compared.dump();
  auto len = all_gather(torch::tensor({static_cast<int64_t>(mine.size())}, torch::kInt64), "config check (lengths)");
  const int64_t max_len = len.max().item<int64_t>();
  auto bytes = torch::zeros({max_len}, torch::kInt64);
  int64_t* out = bytes.data_ptr<int64_t>();
  for (size_t k = 0; k < mine.size(); ++k) out[k] = static_cast<unsigned char>(mine[k]);
  const auto all = all_gather(bytes, "config check").contiguous();
  const auto text = [&](int64_t r) {
    std::string t(static_cast<size_t>(len[r][0].item<int64_t>()), ' ');
    const int64_t* p = all[r].data_ptr<int64_t>();
    for (size_t k = 0; k < t.size(); ++k) t[k] = static_cast<char>(p[k]);
    return t;
  };
  const std::string root = text(0);
  for (int64_t r = 1; r < world_size(); ++r) {
    const std::string other = text(r);
    if (other == root) continue;
    throw UsageError("rank " + std::to_string(r) + " runs another config than rank 0 (" +
                     config_difference(nlohmann::json::parse(root), nlohmann::json::parse(other)) +
                     ", rank 0's there, rank " + std::to_string(r) + "'s now): every rank must run the same config");
  }
}

}  // namespace lopt
