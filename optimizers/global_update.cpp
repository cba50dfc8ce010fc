#include "optimizers/global_update.h"

#include <torch/torch.h>

#include "common/config.h"
#include "common/errors.h"

namespace lopt {

LearnedAggregation::LearnedAggregation(std::shared_ptr<const Optimizer> opt) : opt_(std::move(opt)) {
  TORCH_CHECK(opt_->worker_inputs() > 0, "LearnedAggregation needs an optimizer with worker_inputs > 0 (a learned aggregator)");
}

OptState LearnedAggregation::init(const ParamSet& params) const { return opt_->init(params); }

int64_t LearnedAggregation::workers() const { return opt_->worker_inputs(); }

const Optimizer& LearnedAggregation::optimizer() const { return *opt_; }

void LearnedAggregation::apply_(OptState& state, const std::vector<torch::Tensor>& mean_delta,
                                const std::vector<torch::Tensor>& worker_deltas, const torch::Tensor& loss) const {
  opt_->aggregate_(state, mean_delta, worker_deltas, loss);
}

std::unique_ptr<GlobalUpdate> make_global_update(std::shared_ptr<const Optimizer> opt) {
  if (opt->worker_inputs() > 0) return std::make_unique<LearnedAggregation>(std::move(opt));
  return std::make_unique<MeanDeltaUpdate>(std::move(opt));
}

std::unique_ptr<GlobalUpdate> make_global_update(const nlohmann::json& config, int64_t workers, const std::string& path) {
  auto update = make_global_update(std::shared_ptr<const Optimizer>(make_optimizer(config, path)));
  config_check(update->workers() == 0 || update->workers() == workers, path + "/worker_inputs",
               "the learned aggregator takes " + std::to_string(update->workers()) + " workers' deltas but local_sgd.workers is " +
                   std::to_string(workers) + " (use a checkpoint meta-trained with that many workers)");
  return update;
}

}  // namespace lopt
