#include "experiments/meta_train.h"

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

}  // namespace lopt
