#include "experiments/sweep.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "common/config.h"
#include "experiments/h5_writer.h"
#include "experiments/train.h"

namespace lopt {

namespace {
struct SweepSpec {
  nlohmann::json base, grid;
  std::string output_dir, summary;
};

SweepSpec read_spec(const nlohmann::json& sweep) {
  ConfigReader r(sweep, "");
  SweepSpec s;
  s.base = r.object("base");
  s.grid = r.object("grid");
  s.output_dir = r.require<std::string>("output_dir");
  s.summary = r.get<std::string>("summary", s.output_dir + ".h5");
  r.finish();
  config_check(!s.grid.empty(), "/grid", "must name at least one key with a list of values");
  for (auto it = s.grid.begin(); it != s.grid.end(); ++it)
    config_check(it.value().is_array() && !it.value().empty(), "/grid/" + it.key(), "must be a non-empty list");
  return s;
}
/// "a.b,c.d" -> {"a.b", "c.d"}: keys varied together (zipped) rather than crossed.
std::vector<std::string> split_keys(const std::string& key) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    auto comma = key.find(',', start);
    parts.push_back(key.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) return parts;
    start = comma + 1;
  }
}
}  // namespace

std::vector<SweepRun> expand_sweep(const nlohmann::json& sweep) {
  auto spec = read_spec(sweep);
  std::vector<std::string> keys;
  for (auto it = spec.grid.begin(); it != spec.grid.end(); ++it) keys.push_back(it.key());
  std::vector<size_t> idx(keys.size(), 0);
  std::vector<SweepRun> runs;
  while (true) {
    SweepRun run;
    run.config = spec.base;
    for (size_t k = 0; k < keys.size(); ++k) {
      const auto& v = spec.grid[keys[k]][idx[k]];
      auto parts = split_keys(keys[k]);
      if (parts.size() == 1) {
        run.point[keys[k]] = v;
        set_dotted(run.config, keys[k], v);
        continue;
      }
      config_check(v.is_array() && v.size() == parts.size(), "/grid/" + keys[k],
                   "a grid key naming " + std::to_string(parts.size()) + " keys takes lists of " +
                       std::to_string(parts.size()) + " values, got " + v.dump());
      for (size_t j = 0; j < parts.size(); ++j) {
        run.point[parts[j]] = v[j];
        set_dotted(run.config, parts[j], v[j]);
      }
    }
    char name[32];
    std::snprintf(name, sizeof name, "run_%04zu.h5", runs.size());
    run.config["output"] = (std::filesystem::path(spec.output_dir) / name).string();
    try {
      run.config = resolve_train_config(run.config);
    } catch (const ConfigError& e) {
      throw ConfigError("/base" + e.path(), e.message() + " (in the run with grid point " + run.point.dump() + ")");
    }
    runs.push_back(run);
    size_t k = keys.size();
    while (k > 0) {
      --k;
      if (++idx[k] < spec.grid[keys[k]].size()) break;
      idx[k] = 0;
      if (k == 0) return runs;
    }
    if (keys.empty()) return runs;
  }
}

nlohmann::json run_sweep(const nlohmann::json& sweep, ProgressMode progress, bool fresh) {
  auto spec = read_spec(sweep);
  auto runs = expand_sweep(sweep);
  nlohmann::json rows = nlohmann::json::array();
  int64_t reused = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& run = runs[i];
    std::string out = run.config["output"];
    if (!fresh && finished_run_matches(out, run.config)) {
      ++reused;
      std::fprintf(stderr, "sweep: run %zu/%zu %s already done with this config (%s), reused\n", i + 1, runs.size(),
                   run.point.dump().c_str(), h5_read_string_attr(out, "status").c_str());
    } else {
      std::fprintf(stderr, "sweep: run %zu/%zu %s\n", i + 1, runs.size(), run.point.dump().c_str());
      try {
        run_train(run.config, progress);
      } catch (const DivergenceError& e) {
        std::fprintf(stderr, "sweep: %s (recorded, continuing)\n", e.what());
      }
    }
    nlohmann::json row = {{"point", run.point}, {"file", out}, {"status", h5_read_string_attr(out, "status")}};
    // Training loss, the evaluation split's loss and the task's report metric (final_test_loss and
    // final_test_accuracy for classifiers, final_validation_loss and _bits_per_byte for text).
    const std::string split = h5_read_string_attr(out, "eval_split"), metric = h5_read_string_attr(out, "report_metric");
    row["report_metric"] = metric;
    for (const std::string& k : {std::string("final_train_loss"), "final_" + split + "_loss", "final_" + metric, std::string("wall_time_s")}) {
      double v = h5_read_double_attr(out, k);
      row[k] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
    }
    rows.push_back(row);
  }
  std::fprintf(stderr, "sweep: %lld of %zu runs reused (same resolved config and inputs)%s\n",
               static_cast<long long>(reused), runs.size(), fresh ? ", --fresh" : "");
  H5Writer w(spec.summary);
  w.attr("kind", std::string("sweep"));
  w.attr("config", sweep.dump(2));
  w.attr("runs_reused", reused);
  w.attr("runs", rows.dump());
  std::vector<double> ftl, acc;
  const std::string metric = rows.empty() ? std::string("test_accuracy") : rows.front()["report_metric"].get<std::string>();
  for (const auto& r : rows) {
    ftl.push_back(r["final_train_loss"].is_null() ? NAN : r["final_train_loss"].get<double>());
    const std::string k = "final_" + metric;
    acc.push_back(!r.contains(k) || r[k].is_null() ? NAN : r[k].get<double>());
  }
  w.dataset("final_train_loss", ftl);
  w.dataset("final_" + metric, acc);
  w.commit();
  return rows;
}

}  // namespace lopt
