#include "experiments/compare.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include "common/config.h"
#include "common/errors.h"
#include "experiments/h5_writer.h"
#include "experiments/train.h"

namespace lopt {

namespace {

struct Spec {
  nlohmann::json base;
  std::vector<uint64_t> seeds;
  std::vector<nlohmann::json> contenders;  // {name, optimizer, lr_grid}
  std::string output_dir, summary;
};

Spec read_spec(const nlohmann::json& j) {
  config_check(j.is_object(), "", "a comparison must be a JSON object with base, seeds, contenders, output_dir");
  ConfigReader r(j, "");
  Spec s;
  s.base = r.object("base");
  config_check(!s.base.contains("optimizer"), "/base/optimizer", "give optimizers per contender, not in base");
  s.seeds = r.get<std::vector<uint64_t>>("seeds", {0});
  config_check(!s.seeds.empty(), "/seeds", "needs at least one seed");
  s.output_dir = r.require<std::string>("output_dir");
  s.summary = r.get<std::string>("summary", s.output_dir + ".h5");
  auto contenders = j.value("contenders", nlohmann::json::array());
  r.get<nlohmann::json>("contenders", nlohmann::json::array());
  r.finish();
  config_check(contenders.is_array() && !contenders.empty(), "/contenders", "needs a non-empty list of {name, optimizer, lr_grid}");
  std::set<std::string> names;
  for (size_t i = 0; i < contenders.size(); ++i) {
    const std::string path = "/contenders/" + std::to_string(i);
    ConfigReader c(contenders[i], path);
    nlohmann::json out;
    out["name"] = c.require<std::string>("name");
    out["optimizer"] = c.object("optimizer");
    out["lr_grid"] = c.get<std::vector<double>>("lr_grid", {});
    c.finish();
    const std::string name = out["name"];
    config_check(!name.empty() && name.find_first_of("/ \t") == std::string::npos, c.path_of("name"),
                 "must be non-empty without '/' or spaces (it names files)");
    config_check(names.insert(name).second, c.path_of("name"), "duplicate contender name '" + name + "'");
    config_check(!out["optimizer"].empty(), c.path_of("optimizer"), "required (e.g. {\"type\": \"adamw\"})");
    for (double lr : out["lr_grid"].get<std::vector<double>>()) config_check(lr > 0, c.path_of("lr_grid"), "learning rates must be > 0");
    s.contenders.push_back(out);
  }
  return s;
}

}  // namespace

std::vector<CompareRun> expand_compare(const nlohmann::json& spec_json) {
  auto spec = read_spec(spec_json);
  std::vector<CompareRun> runs;
  for (size_t c = 0; c < spec.contenders.size(); ++c) {
    const auto& ct = spec.contenders[c];
    const auto grid = ct["lr_grid"].get<std::vector<double>>();
    const int64_t n_lr = grid.empty() ? 1 : static_cast<int64_t>(grid.size());
    for (int64_t li = 0; li < n_lr; ++li) {
      for (uint64_t seed : spec.seeds) {
        CompareRun run;
        run.contender = c;
        run.lr_index = grid.empty() ? -1 : li;
        run.seed = seed;
        auto cfg = spec.base;
        cfg["optimizer"] = ct["optimizer"];
        if (!grid.empty()) cfg["optimizer"]["lr"] = grid[li];
        cfg["seed"] = seed;
        char name[160];
        std::snprintf(name, sizeof name, "%s_lr%lld_seed%llu.h5", ct["name"].get<std::string>().c_str(),
                      static_cast<long long>(li), static_cast<unsigned long long>(seed));
        cfg["output"] = (std::filesystem::path(spec.output_dir) / name).string();
        try {
          run.config = resolve_train_config(cfg);
        } catch (const ConfigError& e) {
          std::string p = e.path();
          if (p.rfind("/optimizer", 0) == 0) p = "/contenders/" + std::to_string(c) + p;
          else p = "/base" + p;
          throw ConfigError(p, std::string(e.what()));
        }
        runs.push_back(run);
      }
    }
  }
  return runs;
}

nlohmann::json run_compare(const nlohmann::json& spec_json, ProgressMode progress) {
  auto spec = read_spec(spec_json);
  auto runs = expand_compare(spec_json);
  std::filesystem::create_directories(spec.output_dir);
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& run = runs[i];
    const std::string out = run.config["output"];
    std::string status = std::filesystem::exists(out) ? h5_read_string_attr(out, "status") : "";
    if (status == "completed" || status == "diverged") continue;
    std::fprintf(stderr, "compare: run %zu/%zu %s lr %s seed %llu\n", i + 1, runs.size(),
                 spec.contenders[run.contender]["name"].get<std::string>().c_str(),
                 run.config["optimizer"].contains("lr") ? run.config["optimizer"]["lr"].dump().c_str() : "-",
                 static_cast<unsigned long long>(run.seed));
    try {
      run_train(run.config, progress);
    } catch (const DivergenceError& e) {
      std::fprintf(stderr, "compare: %s (recorded as diverged, counts as +inf when choosing the LR)\n", e.what());
    }
  }
  // Per contender and LR: mean final training loss over seeds (a diverged run counts as +inf).
  nlohmann::json result = nlohmann::json::array();
  H5Writer w(spec.summary);
  w.attr("kind", std::string("compare"));
  w.attr("config", spec_json.dump(2));
  const size_t S = spec.seeds.size();
  for (size_t c = 0; c < spec.contenders.size(); ++c) {
    const auto& ct = spec.contenders[c];
    const auto grid = ct["lr_grid"].get<std::vector<double>>();
    const size_t n_lr = grid.empty() ? 1 : grid.size();
    std::vector<double> mean_final(n_lr, 0.0);
    std::vector<std::vector<double>> finals(n_lr);  // final_train_loss of each seed's run, as written
    std::vector<std::vector<const CompareRun*>> by_lr(n_lr);
    for (const auto& run : runs)
      if (run.contender == c) by_lr[run.lr_index < 0 ? 0 : run.lr_index].push_back(&run);
    for (size_t li = 0; li < n_lr; ++li) {
      for (const auto* run : by_lr[li]) {
        const std::string out = run->config["output"];
        finals[li].push_back(h5_read_double_attr(out, "final_train_loss"));
        const double v = h5_read_string_attr(out, "status") == "completed" ? finals[li].back() : INFINITY;
        mean_final[li] += (std::isfinite(v) ? v : INFINITY) / static_cast<double>(S);
      }
    }
    size_t best = 0;
    for (size_t li = 1; li < n_lr; ++li)
      if (mean_final[li] < mean_final[best]) best = li;
    // Curves and per-seed figures of the chosen LR.
    const std::vector<double>& per_seed = finals[best];
    std::vector<double> curve, acc;
    size_t curve_n = 0;
    for (const auto* run : by_lr[best]) {
      const std::string out = run->config["output"];
      acc.push_back(h5_read_double_attr(out, "final_test_accuracy"));
      auto loss = h5_read_doubles(out, "train/loss");
      if (curve.empty()) curve.assign(loss.size(), 0.0);
      if (loss.size() == curve.size()) {
        for (size_t t = 0; t < loss.size(); ++t) curve[t] += loss[t];
        ++curve_n;
      }
    }
    for (auto& v : curve) v /= static_cast<double>(std::max<size_t>(1, curve_n));
    const std::string g = "c" + std::to_string(c);
    w.group(g);
    w.attr("name", ct["name"].get<std::string>(), g);
    w.attr("optimizer", by_lr[best].front()->config["optimizer"].dump(), g);
    w.attr("best_lr", grid.empty() ? NAN : grid[best], g);
    w.attr("mean_final_train_loss", mean_final[best], g);
    w.dataset(g + "/final_train_loss", per_seed);
    w.dataset(g + "/final_test_accuracy", acc);
    w.dataset(g + "/train_loss_mean", curve);
    if (!grid.empty()) {
      w.dataset(g + "/lr_grid", grid);
      w.dataset(g + "/lr_grid_mean_final_train_loss", mean_final);
    }
    double acc_mean = 0;
    for (double a : acc) acc_mean += a / static_cast<double>(acc.size());
    result.push_back({{"name", ct["name"]},
                      {"best_lr", grid.empty() ? nlohmann::json(nullptr) : nlohmann::json(grid[best])},
                      {"mean_final_train_loss", std::isfinite(mean_final[best]) ? nlohmann::json(mean_final[best]) : nlohmann::json(nullptr)},
                      {"final_train_loss", per_seed},
                      {"mean_final_test_accuracy", acc_mean}});
  }
  w.attr("contenders", static_cast<int64_t>(spec.contenders.size()));
  w.attr("summary", result.dump());
  w.commit();
  return result;
}

}  // namespace lopt
