#include "meta/local_sgd.h"

#include <torch/torch.h>

#include "common/config.h"
#include "common/errors.h"
#include "common/rng.h"
#include "tasks/task.h"

namespace lopt {

LocalSgdConfig LocalSgdConfig::from_json(const nlohmann::json& j, const std::string& path) {
  ConfigReader r(j, path);
  LocalSgdConfig c;
  c.workers = r.get<int64_t>("workers", c.workers);
  c.local_steps = r.get<int64_t>("local_steps", c.local_steps);
  c.local_lr = r.get<double>("local_lr", c.local_lr);
  c.mode = r.get<std::string>("mode", c.mode);
  c.dirichlet_alpha = r.get<double>("dirichlet_alpha", c.dirichlet_alpha);
  c.partition_seed = r.get<uint64_t>("partition_seed", c.partition_seed);
  r.finish();
  config_check(std::isfinite(c.dirichlet_alpha) && c.dirichlet_alpha >= 0, r.path_of("dirichlet_alpha"),
               "must be >= 0 (0 = IID shards; e.g. 0.1 = strongly label-skewed, 100 = nearly IID)");
  config_check(c.workers >= 1, r.path_of("workers"), "must be >= 1");
  config_check(c.local_steps >= 1, r.path_of("local_steps"), "must be >= 1 (H, local steps per communication round)");
  config_check(std::isfinite(c.local_lr) && c.local_lr > 0, r.path_of("local_lr"), "must be > 0");
  config_check(c.mode == "local_sgd" || c.mode == "data_parallel", r.path_of("mode"),
               "must be \"local_sgd\" (H local SGD steps per round) or \"data_parallel\" (one gradient over the H batches)");
  return c;
}

nlohmann::json LocalSgdConfig::to_json() const {
  nlohmann::json j = {{"workers", workers}, {"local_steps", local_steps}, {"local_lr", local_lr}, {"mode", mode}};
  if (dirichlet_alpha > 0) {  // only when set, so IID configs (and the run files keyed by them) stay as they were
    j["dirichlet_alpha"] = dirichlet_alpha;
    j["partition_seed"] = partition_seed;
  }
  return j;
}

std::vector<RoundResult> local_rounds(const Task& task, const std::vector<const ParamSet*>& globals, int64_t workers,
                                      const std::vector<Batch>& batches, const LocalSgdConfig& config) {
  torch::NoGradGuard no_grad;
  const int64_t R = static_cast<int64_t>(globals.size()), W = workers, P = R * W;
  TORCH_CHECK(R >= 1 && static_cast<int64_t>(batches.size()) == config.local_steps,
              "local_rounds: one stacked batch per local step expected");
  const ParamSet& like = *globals.front();
  // Stacked worker parameters [R * W, *shape]: each run's global parameters repeated W times.
  std::vector<torch::Tensor> start, cur, grad_sum;
  for (size_t k = 0; k < like.size(); ++k) {
    std::vector<torch::Tensor> parts;
    for (const auto* g : globals) {
      auto shape = g->tensors[k].sizes().vec();
      shape.insert(shape.begin(), W);
      parts.push_back(g->tensors[k].detach().unsqueeze(0).expand(shape));
    }
    start.push_back(torch::cat(parts).contiguous());
    cur.push_back(start.back().clone());
    if (config.mode == "data_parallel") grad_sum.push_back(torch::zeros_like(start.back()));
  }
  auto loss_sum = torch::zeros({P}, torch::kFloat64), first_loss = torch::zeros({P}, torch::kFloat64);
  for (int64_t h = 0; h < config.local_steps; ++h) {
    TORCH_CHECK(batches[static_cast<size_t>(h)].size(true) > 0 &&
                    batches[static_cast<size_t>(h)].tensors.begin()->second.size(0) == P,
                "local_rounds: batch of local step ", h, " must be stacked over ", P, " workers");
    std::vector<torch::Tensor> grads;
    auto loss = parallel_population_loss_and_grads(task, like, cur, batches[static_cast<size_t>(h)], &grads);
    loss_sum += loss.to(torch::kFloat64);
    if (h == 0) first_loss = loss.to(torch::kFloat64);
    for (size_t k = 0; k < cur.size(); ++k) {
      if (config.mode == "data_parallel") grad_sum[k].add_(grads[k]);
      else cur[k].sub_(grads[k], config.local_lr);
    }
  }
  auto mean_loss = (loss_sum / static_cast<double>(config.local_steps)).view({R, W}).mean(1);
  auto global_loss = config.mode == "data_parallel" ? mean_loss : first_loss.view({R, W}).mean(1);
  std::vector<RoundResult> out(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    auto& o = out[static_cast<size_t>(r)];
    o.loss = mean_loss[r].item<double>();
    o.global_loss = global_loss[r].item<double>();
    for (size_t k = 0; k < cur.size(); ++k) {
      auto d = config.mode == "data_parallel" ? grad_sum[k].narrow(0, r * W, W) / static_cast<double>(config.local_steps)
                                              : start[k].narrow(0, r * W, W) - cur[k].narrow(0, r * W, W);
      o.worker_deltas.push_back(d);
      o.mean_delta.push_back(d.mean(0));
    }
  }
  return out;
}

WorkerStreams::WorkerStreams(std::shared_ptr<const DataSource> source, int64_t batch_size, uint64_t seed,
                             int64_t first_worker, int64_t workers, const LocalSgdConfig& config) {
  config_check(config.dirichlet_alpha == 0 || source->has_labels(), "/local_sgd/dirichlet_alpha",
               "label-skewed shards need a labelled (image) dataset; use 0 (IID) for this task");
  for (int64_t w = first_worker; w < first_worker + workers; ++w)
    streams_.emplace_back(source, Split::train, batch_size, derive_seed(seed, "worker" + std::to_string(w)), config.shard(w));
}

std::vector<Batch> WorkerStreams::next_round(int64_t local_steps) {
  std::vector<std::vector<Batch>> per_step(static_cast<size_t>(local_steps));
  for (auto& s : streams_)
    for (int64_t h = 0; h < local_steps; ++h) per_step[static_cast<size_t>(h)].push_back(s.next());
  std::vector<Batch> out;
  for (auto& b : per_step) out.push_back(Batch::stack(b));
  return out;
}

nlohmann::json WorkerStreams::state() {
  nlohmann::json j = nlohmann::json::array();
  for (auto& s : streams_) j.push_back(s.state());
  return j;
}

void WorkerStreams::restore(const nlohmann::json& state) {
  TORCH_CHECK(state.is_array() && state.size() == streams_.size(), "WorkerStreams::restore: expected ", streams_.size(), " streams");
  for (size_t i = 0; i < streams_.size(); ++i) streams_[i].restore(state[i]);
}

}  // namespace lopt
