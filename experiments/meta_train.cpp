#include "experiments/meta_train.h"

#include <cmath>

#include "common/errors.h"
#include "experiments/h5_writer.h"
#include "optimizers/kernels/lopt_cpu.h"

namespace lopt {

void write_meta_train_log(const std::string& path, const MetaTrainer& trainer) {
  const auto& log = trainer.log();
  H5Writer w(path);
  w.attr("kind", std::string("meta_train"));
  w.attr("config", trainer.config().dump(2));
  w.attr("outer_steps_done", trainer.step());
  w.attr("skipped_estimates", log.skipped);
  kernels::apply_target_from_env();
  w.attr("simd_target", kernels::dispatched_target());
  w.attr("machine", machine_description());
  w.attr("outer_optimizer", std::string(trainer.config()["outer"]["weight_decay"].get<double>() > 0
                                            ? "AdamW (decoupled weight decay), warmup-cosine, global-norm clip"
                                            : "Adam (no weight decay), warmup-cosine, global-norm clip"));
  w.attr("checkpoint", trainer.checkpoint_path());
  w.attr("theta", trainer.theta_path());
  if (!log.continued_at.empty())  // JSON list of outer steps; see MetaTrainLog::continued_at
    w.attr("continued_from_outputs_at", nlohmann::json(log.continued_at).dump());
  if (!log.elapsed.empty()) {
    w.attr("wall_time", log.elapsed.back());
    w.attr("inner_steps_per_second", static_cast<double>(log.inner_steps.back()) / log.elapsed.back());
    w.attr("outer_steps_per_hour", 3600.0 * static_cast<double>(log.step.size()) / log.elapsed.back());
  }
  w.group("meta");
  w.dataset("meta/step", log.step);
  w.dataset("meta/meta_loss", log.meta_loss);
  w.dataset("meta/grad_norm", log.grad_norm);
  w.dataset("meta/outer_lr", log.outer_lr);
  w.dataset("meta/elapsed", log.elapsed);
  w.dataset("meta/inner_steps", log.inner_steps);
  w.commit();
}

MetaTrainLog read_meta_train_log(const std::string& path, nlohmann::json* config) {
  if (h5_read_string_attr(path, "kind") != "meta_train") throw IoError(path, "not a meta-training log (its \"kind\" is not meta_train)");
  MetaTrainLog log;
  auto ints = [&](const std::string& name) {
    std::vector<int64_t> v;
    for (double x : h5_read_doubles(path, name)) v.push_back(static_cast<int64_t>(std::llround(x)));
    return v;
  };
  log.step = ints("meta/step");
  log.meta_loss = h5_read_doubles(path, "meta/meta_loss");
  log.grad_norm = h5_read_doubles(path, "meta/grad_norm");
  log.outer_lr = h5_read_doubles(path, "meta/outer_lr");
  log.elapsed = h5_read_doubles(path, "meta/elapsed");
  log.inner_steps = ints("meta/inner_steps");
  log.skipped = static_cast<int64_t>(std::llround(h5_read_double_attr(path, "skipped_estimates")));
  const auto cont = h5_read_string_attr(path, "continued_from_outputs_at");
  if (!cont.empty()) log.continued_at = nlohmann::json::parse(cont).get<std::vector<int64_t>>();
  if (config) *config = nlohmann::json::parse(h5_read_string_attr(path, "config"));
  return log;
}

}  // namespace lopt
