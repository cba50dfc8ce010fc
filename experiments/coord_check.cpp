#include "experiments/coord_check.h"

#include <torch/torch.h>

#include "common/config.h"
#include "common/rng.h"
#include "experiments/h5_writer.h"
#include "optimizers/optimizer.h"
#include "tasks/task.h"

namespace lopt {

CoordCheckConfig CoordCheckConfig::from_json(const nlohmann::json& j) {
  ConfigReader r(j, "");
  CoordCheckConfig c;
  c.widths = r.get<std::vector<int64_t>>("widths", c.widths);
  c.parametrizations = r.get<std::vector<std::string>>("parametrizations", c.parametrizations);
  c.depth = r.get<int64_t>("depth", c.depth);
  c.steps = r.get<int64_t>("steps", c.steps);
  c.seeds = r.get<int64_t>("seeds", c.seeds);
  c.lr = r.get<double>("lr", c.lr);
  c.batch_size = r.get<int64_t>("batch_size", c.batch_size);
  c.image_size = r.get<int64_t>("image_size", c.image_size);
  c.base_width = r.get<int64_t>("base_width", c.base_width);
  c.dataset = r.get<std::string>("dataset", c.dataset);
  c.data_dir = r.get<std::string>("data_dir", c.data_dir);
  c.task = r.object("task");
  c.optimizers = r.object("optimizers");
  r.finish();
  config_check(!c.widths.empty(), "/widths", "must be a non-empty list");
  for (auto w : c.widths) config_check(w >= 1, "/widths", "widths must be >= 1");
  for (const auto& p : c.parametrizations)
    config_check(p == "sp" || p == "mup", "/parametrizations", "unknown parametrization \"" + p + "\" (valid: sp, mup)");
  config_check(c.steps >= 1, "/steps", "must be >= 1");
  config_check(c.seeds >= 1, "/seeds", "must be >= 1");
  config_check(c.lr > 0, "/lr", "must be > 0");
  config_check(!c.task.contains("width") && !c.task.contains("parametrization"), "/task",
               "width and parametrization are set per point from widths, parametrizations and base_width");
  for (auto it = c.optimizers.begin(); it != c.optimizers.end(); ++it) {
    config_check(it.key() == "sp" || it.key() == "mup", "/optimizers/" + it.key(),
                 "keys are parametrizations (sp, mup), values optimizer configs, e.g. {\"mup\": {\"type\": \"mucelo2\"}}");
    make_optimizer(it.value(), "/optimizers/" + it.key());  // every optimizer is valid before any work
  }
  for (const auto& p : c.parametrizations)
    for (auto w : c.widths) resolve_task_config(coord_check_task(c, w, p), "/task");
  return c;
}

nlohmann::json CoordCheckConfig::to_json() const {
  return {{"widths", widths}, {"parametrizations", parametrizations}, {"depth", depth},   {"steps", steps},
          {"seeds", seeds},   {"lr", lr},     {"batch_size", batch_size}, {"image_size", image_size},
          {"base_width", base_width}, {"dataset", dataset}, {"data_dir", data_dir}, {"task", task},
          {"optimizers", optimizers}};
}

nlohmann::json coord_check_task(const CoordCheckConfig& c, int64_t width, const std::string& parametrization) {
  nlohmann::json t = c.task;
  if (t.empty())
    t = {{"type", "mlp"}, {"depth", c.depth}, {"batch_size", c.batch_size}, {"image_size", c.image_size},
         {"dataset", c.dataset}, {"data_dir", c.data_dir}};
  t["width"] = width;
  t["parametrization"] = {{"type", parametrization}, {"base_width", c.base_width}};
  return t;
}

nlohmann::json coord_check_optimizer(const CoordCheckConfig& c, const std::string& parametrization) {
  if (c.optimizers.contains(parametrization)) return c.optimizers.at(parametrization);
  return {{"type", parametrization == "mup" ? "muadam" : "adam"}, {"lr", c.lr}};
}

double CoordCheckResult::at(size_t p, size_t w, int64_t t, size_t l) const {
  size_t W = config.widths.size(), T = static_cast<size_t>(config.steps + 1), L = layers.size();
  return rms[((p * W + w) * T + static_cast<size_t>(t)) * L + l];
}

CoordCheckResult run_coord_check(const CoordCheckConfig& c, ProgressMode progress_mode) {
  CoordCheckResult res;
  res.config = c;
  const size_t P = c.parametrizations.size(), W = c.widths.size(), T = static_cast<size_t>(c.steps + 1);
  Progress progress(static_cast<int64_t>(P * W) * c.seeds, "coord-check", progress_mode);
  int64_t done = 0;
  for (size_t p = 0; p < P; ++p) {
    for (size_t w = 0; w < W; ++w) {
      auto task = make_task(coord_check_task(c, c.widths[w], c.parametrizations[p]), "/task");
      if (res.layers.empty()) {
        res.layers = task->activation_names();
        res.rms.assign(P * W * T * res.layers.size(), 0.0);
      }
      const size_t L = res.layers.size();
      auto opt = make_optimizer(coord_check_optimizer(c, c.parametrizations[p]), "/optimizers/" + c.parametrizations[p]);
      for (int64_t s = 0; s < c.seeds; ++s) {
        auto gen = make_generator(derive_seed(static_cast<uint64_t>(s), "coord_check"));
        auto state = opt->init(task->init(gen));
        auto batch = task->sample_batch(Split::train, gen);
        for (int64_t t = 0; t < static_cast<int64_t>(T); ++t) {
          auto params = state.params.detached_requiring_grad();
          std::vector<torch::Tensor> acts;
          auto out = task->loss_and_metrics(params, batch, &acts);
          for (size_t l = 0; l < L; ++l)
            res.rms[((p * W + w) * T + static_cast<size_t>(t)) * L + l] +=
                acts[l].detach().pow(2).mean().sqrt().item<double>() / static_cast<double>(c.seeds);
          if (t + 1 == static_cast<int64_t>(T)) break;
          auto grads = torch::autograd::grad({out.loss}, params.tensors);
          opt->update_(state, grads, out.loss.detach());
        }
        progress.update(++done);
      }
    }
  }
  progress.finish();
  return res;
}

void write_coord_check(const std::string& path, const CoordCheckResult& r) {
  H5Writer w(path);
  w.attr("kind", std::string("coord_check"));
  w.attr("config", r.config.to_json().dump(2));
  nlohmann::json layers = r.layers;
  w.attr("layers", layers.dump());
  w.attr("parametrizations", nlohmann::json(r.config.parametrizations).dump());
  w.dataset("widths", r.config.widths);
  w.dataset("rms", r.rms,
            {r.config.parametrizations.size(), r.config.widths.size(), static_cast<uint64_t>(r.config.steps + 1),
             r.layers.size()});
  w.commit();
}

}  // namespace lopt
