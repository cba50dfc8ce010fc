#include "experiments/sweep.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include <map>
#include <set>

#include "common/config.h"
#include "common/errors.h"
#include "experiments/compare.h"
#include "experiments/h5_writer.h"
#include "experiments/train.h"
#include "experiments/train_jobs.h"

namespace lopt {

namespace {
struct SweepSpec {
  nlohmann::json base, grid, tune, plot;
  std::string output_dir, summary;
};

SweepSpec read_spec(const nlohmann::json& sweep) {
  ConfigReader r(sweep, "");
  SweepSpec s;
  s.base = r.object("base");
  s.grid = r.object("grid");
  s.tune = r.object("tune");
  s.plot = r.object("plot");
  s.output_dir = r.require<std::string>("output_dir");
  s.summary = r.get<std::string>("summary", s.output_dir + ".h5");
  r.finish();
  if (!s.plot.empty()) {
    ConfigReader p(s.plot, "/plot");
    p.require<std::string>("x");
    p.get<std::string>("group", "");
    p.get<bool>("logx", false);
    p.get<bool>("curves", false);
    p.get<std::string>("title", "");
    p.get<double>("ymax", 0.0);
    p.finish();
  }
  if (!s.tune.empty()) {
    config_check(s.tune.contains("output_dir"), "/tune/output_dir", "required (a folder for the tuning runs)");
    if (!s.tune.contains("summary")) s.tune["summary"] = s.tune["output_dir"].get<std::string>() + ".h5";
  }
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
/// A run's file name: run_NNNN.h5, or in a sweep with "@" labels one made of the point's labels and
/// scalar values (muLO_M_seed100_width512.h5), so that editing the grid keeps every other run's file.
std::string run_file_name(const nlohmann::json& point, size_t index, bool labelled) {
  if (!labelled) {
    char name[32];
    std::snprintf(name, sizeof name, "run_%04zu.h5", index);
    return name;
  }
  std::string name;
  auto add = [&](const std::string& key, const nlohmann::json& v) {
    if (v.is_object() || v.is_array()) return;
    std::string val = v.is_string() ? v.get<std::string>() : v.dump();
    std::string seg = key[0] == '@' ? "" : key.substr(key.rfind('.') == std::string::npos ? 0 : key.rfind('.') + 1);
    name += (name.empty() ? "" : "_") + seg + val;
  };
  for (auto it = point.begin(); it != point.end(); ++it)
    if (it.key()[0] == '@') add(it.key(), it.value());
  for (auto it = point.begin(); it != point.end(); ++it)
    if (it.key()[0] != '@') add(it.key(), it.value());
  for (auto& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_' && c != '=') c = '_';
  return name + ".h5";
}

std::string point_value(const nlohmann::json& point, const std::string& key) {
  if (!point.contains(key)) return "-";
  const auto& v = point[key];
  return v.is_string() ? v.get<std::string>() : v.dump();
}

/// What the tuning comparison `tune` chose for contender `name` (see sweep.h): its optimizer config
/// and the other dotted keys the choice sets (a non-default lr_key such as local_sgd.local_lr, and
/// the keys of its "grid" choice outside "optimizer"), so that a tuned learned optimizer or learned
/// global update carries its whole choice, not only optimizer.lr.
struct TunedChoice {
  nlohmann::json optimizer;
  nlohmann::json sets = nlohmann::json::object();
};
TunedChoice tuned_optimizer(const nlohmann::json& tune, const std::string& name, bool placeholder, const std::string& path) {
  config_check(!tune.empty(), path, "{\"tuned\": \"" + name + "\"} needs a \"tune\" comparison in the sweep");
  nlohmann::json contender;
  std::string names;
  for (const auto& c : tune.value("contenders", nlohmann::json::array())) {
    names += (names.empty() ? "" : ", ") + c.value("name", std::string());
    if (c.value("name", std::string()) == name) contender = c;
  }
  config_check(!contender.empty() && contender.contains("lr_grid"), path,
               "no tuned contender \"" + name + "\" in /tune/contenders (contenders: " + names + ")");
  const std::string summary = tune["summary"];
  if (std::filesystem::exists(summary) && h5_read_string_attr(summary, "kind") == "compare") {
    const auto stored = nlohmann::json::parse(h5_read_string_attr(summary, "config"));
    if (stored == tune) {
      for (const auto& row : nlohmann::json::parse(h5_read_string_attr(summary, "summary"))) {
        if (row.value("name", std::string()) != name) continue;
        if (row.value("tuning_failed", false))
          throw Error("sweep: every tuning candidate of \"" + name + "\" diverged in " + summary + "; widen its lr_grid");
        TunedChoice choice;
        choice.optimizer = row.at("optimizer");
        if (row.contains("schedule_spec")) choice.optimizer["schedule"] = relative_schedule_config(row["schedule_spec"]);
        if (row.contains("lr_key")) choice.sets[row["lr_key"].get<std::string>()] = row.at("best_lr");
        if (row.contains("grid_choice"))
          for (auto it = row["grid_choice"].begin(); it != row["grid_choice"].end(); ++it)
            if (it.key().rfind("optimizer.", 0) != 0) choice.sets[it.key()] = it.value();
        return choice;
      }
    }
  }
  if (!placeholder)
    throw UsageError("the sweep's tuning comparison (" + summary + ") has not run with this \"tune\" spec: run lopt sweep "
                     "without --shard (or with --tune-only) first");
  TunedChoice choice;
  choice.optimizer = contender.at("optimizer");
  const std::string lr_key = contender.value("lr_key", std::string("optimizer.lr"));
  if (lr_key == "optimizer.lr") choice.optimizer["lr"] = contender.at("lr_grid").at(0);
  else choice.sets[lr_key] = contender.at("lr_grid").at(0);
  return choice;
}

/// The comparison that tunes contender `name` at this run's own point (everything but optimizer, seed
/// and output): the sweep's "tune" with this base, only that contender, in its own folder.
nlohmann::json per_point_tune(const SweepSpec& spec, const nlohmann::json& config, const nlohmann::json& point,
                              const std::string& name) {
  auto t = spec.tune;
  auto base = config;
  base.erase("optimizer");
  base.erase("seed");
  base.erase("output");
  t["base"] = base;
  nlohmann::json only = nlohmann::json::array();
  for (const auto& c : spec.tune.value("contenders", nlohmann::json::array()))
    if (c.value("name", std::string()) == name) only.push_back(c);
  t["contenders"] = only;
  nlohmann::json where = nlohmann::json::object();
  for (auto it = point.begin(); it != point.end(); ++it)
    if (it.key() != "seed" && it.key()[0] != '@' && !it.value().is_object()) where[it.key()] = it.value();
  std::string dir = spec.tune["output_dir"].get<std::string>() + "_per_point/" + name;
  std::string leaf = run_file_name(where, 0, true);
  dir += "_" + leaf.substr(0, leaf.size() - 3);
  t["output_dir"] = dir;
  t["summary"] = dir + ".h5";
  return t;
}

/// Replaces {"tuned": name} (the sweep's tuning comparison) and {"tuned": name, "per_point": true}
/// (a comparison at this run's point; collected into `per_point` when given) optimizer values.
void resolve_tuned(const SweepSpec& spec, nlohmann::json& config, const nlohmann::json& point, bool placeholder,
                   std::vector<nlohmann::json>* per_point) {
  if (!config.contains("optimizer") || !config["optimizer"].is_object() || !config["optimizer"].contains("tuned")) return;
  const auto& o = config["optimizer"];
  const bool each = o.value("per_point", false);
  config_check(o["tuned"].is_string() && o.size() == (o.contains("per_point") ? 2u : 1u), "/grid/optimizer",
               "{\"tuned\": \"<contender name>\"[, \"per_point\": true]} takes nothing else");
  const std::string name = o["tuned"];
  nlohmann::json tune = spec.tune;
  if (each) {
    config_check(!spec.tune.empty(), "/grid/optimizer", "per-point tuning needs a \"tune\" comparison to copy");
    tune = per_point_tune(spec, config, point, name);
    if (per_point) per_point->push_back(tune);
  }
  const auto choice = tuned_optimizer(tune, name, placeholder, "/grid/optimizer");
  config["optimizer"] = choice.optimizer;
  for (auto it = choice.sets.begin(); it != choice.sets.end(); ++it) set_dotted(config, it.key(), it.value());
}

/// One summary row from a finished run file.
nlohmann::json summary_row(const SweepRun& run) {
  const std::string out = run.config["output"];
  nlohmann::json row = {{"point", run.point}, {"file", out}, {"status", h5_read_string_attr(out, "status")}};
  // Training loss, the evaluation split's loss and the task's report metric (final_test_loss and
  // final_test_accuracy for classifiers, final_validation_loss and _bits_per_byte for text).
  const std::string split = h5_read_string_attr(out, "eval_split"), metric = h5_read_string_attr(out, "report_metric");
  row["report_metric"] = metric;
  for (const std::string& k : {std::string("final_train_loss"), "final_" + split + "_loss", "final_" + metric, std::string("wall_time_s")}) {
    double v = h5_read_double_attr(out, k);
    row[k] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
  }
  return row;
}

}  // namespace

int64_t shard_of(const nlohmann::json& point, int64_t shards) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a over the point's JSON
  for (unsigned char c : point.dump()) h = (h ^ c) * 1099511628211ULL;
  h ^= h >> 29;  // FNV's low bits mix poorly
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 32;
  return static_cast<int64_t>(h % static_cast<uint64_t>(std::max<int64_t>(1, shards)));
}

std::pair<int64_t, int64_t> parse_shard(const std::string& s) {
  auto slash = s.find('/');
  try {
    if (slash != std::string::npos) {
      size_t a = 0, b = 0;
      const long long i = std::stoll(s.substr(0, slash), &a), n = std::stoll(s.substr(slash + 1), &b);
      if (a == slash && b == s.size() - slash - 1 && n >= 1 && i >= 0 && i < n) return {i, n};
    }
  } catch (const std::exception&) {
  }
  throw UsageError("--shard takes i/n with 0 <= i < n (e.g. --shard 0/4 ... --shard 3/4), got '" + s + "'");
}

std::string sweep_summary_path(const nlohmann::json& sweep, const SweepOptions& o) {
  const auto spec = read_spec(sweep);
  if (o.shards <= 1) return spec.summary;
  std::string stem = spec.summary;
  if (stem.size() > 3 && stem.compare(stem.size() - 3, 3, ".h5") == 0) stem.resize(stem.size() - 3);
  return stem + ".shard" + std::to_string(o.shard) + "of" + std::to_string(o.shards) + ".h5";
}

std::vector<SweepRun> expand_sweep(const nlohmann::json& sweep, bool placeholder_tuned, std::vector<nlohmann::json>* per_point) {
  auto spec = read_spec(sweep);
  std::vector<std::string> keys;
  for (auto it = spec.grid.begin(); it != spec.grid.end(); ++it) keys.push_back(it.key());
  std::vector<size_t> idx(keys.size(), 0);
  std::vector<SweepRun> runs;
  bool labelled = false;
  for (const auto& k : keys) labelled = labelled || k.find('@') != std::string::npos;
  std::set<std::string> names;
  while (true) {
    SweepRun run;
    run.config = spec.base;
    for (size_t k = 0; k < keys.size(); ++k) {
      const auto& v = spec.grid[keys[k]][idx[k]];
      auto parts = split_keys(keys[k]);
      if (parts.size() == 1) {
        run.point[keys[k]] = v;
        if (keys[k].rfind('@', 0) != 0) set_dotted(run.config, keys[k], v);
        continue;
      }
      config_check(v.is_array() && v.size() == parts.size(), "/grid/" + keys[k],
                   "a grid key naming " + std::to_string(parts.size()) + " keys takes lists of " +
                       std::to_string(parts.size()) + " values, got " + v.dump());
      for (size_t j = 0; j < parts.size(); ++j) {
        run.point[parts[j]] = v[j];
        if (parts[j].rfind('@', 0) != 0) set_dotted(run.config, parts[j], v[j]);
      }
    }
    run.config["output"] = (std::filesystem::path(spec.output_dir) / run_file_name(run.point, runs.size(), labelled)).string();
    try {
      resolve_tuned(spec, run.config, run.point, placeholder_tuned, per_point);
      run.config = resolve_train_config(run.config);
    } catch (const ConfigError& e) {
      throw ConfigError("/base" + e.path(), e.message() + " (in the run with grid point " + run.point.dump() + ")");
    }
    config_check(names.insert(run.config["output"].get<std::string>()).second, "/grid",
                 "two runs would write " + run.config["output"].get<std::string>() + "; give the varying object a \"@\" label");
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

nlohmann::json run_sweep(const nlohmann::json& sweep, ProgressMode progress, const SweepOptions& o) {
  auto spec = read_spec(sweep);
  if (!spec.tune.empty() && !o.merge && o.shards <= 1) {
    std::fprintf(stderr, "sweep: tuning comparison -> %s\n", spec.tune["summary"].get<std::string>().c_str());
    run_compare(spec.tune, progress, o.fresh, {}, o.jobs);
    // Per-point tuning comparisons (an upper bound: each point tuned on its own), once each.
    std::vector<nlohmann::json> per_point;
    expand_sweep(sweep, true, &per_point);
    std::set<std::string> done;
    for (const auto& t : per_point) {
      if (!done.insert(t["output_dir"].get<std::string>()).second) continue;
      std::fprintf(stderr, "sweep: per-point tuning comparison -> %s\n", t["summary"].get<std::string>().c_str());
      run_compare(t, progress, o.fresh, {}, o.jobs);
    }
  }
  if (o.tune_only) return nlohmann::json::array();
  auto runs = expand_sweep(sweep);
  nlohmann::json rows = nlohmann::json::array();
  int64_t reused = 0;
  std::vector<std::string> missing;
  std::vector<const SweepRun*> mine;  // this shard's runs, in order
  std::vector<PendingRun> todo;
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& run = runs[i];
    if (!o.merge && shard_of(run.point, o.shards) != o.shard) continue;
    std::string out = run.config["output"];
    if (o.merge) {
      if (!finished_run_matches(out, run.config)) missing.push_back(out);
      else rows.push_back(summary_row(run));
      continue;
    }
    mine.push_back(&run);
    if (!o.fresh && finished_run_matches(out, run.config)) {
      ++reused;
      std::fprintf(stderr, "sweep: run %zu/%zu %s already done with this config (%s), reused\n", i + 1, runs.size(),
                   run.point.dump().c_str(), h5_read_string_attr(out, "status").c_str());
    } else {
      todo.push_back({run.config, "run " + std::to_string(i + 1) + "/" + std::to_string(runs.size()) + " " + run.point.dump()});
    }
  }
  train_runs(todo, o.jobs, "sweep", [&](const nlohmann::json& cfg) { run_train(cfg, progress); });
  for (const auto* run : mine) rows.push_back(summary_row(*run));
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) list += "\n  " + missing[i];
    if (missing.size() > 5) list += "\n  ...";
    throw UsageError(std::to_string(missing.size()) + " of " + std::to_string(runs.size()) +
                     " runs are not finished with this config:" + list +
                     "\nrun the missing shards (or the sweep without --merge), then merge again");
  }
  if (!o.merge)
    std::fprintf(stderr, "sweep: %lld of %zu runs reused (same resolved config and inputs)%s\n",
                 static_cast<long long>(reused), rows.size(), o.fresh ? ", --fresh" : "");
  H5Writer w(sweep_summary_path(sweep, o));
  w.attr("kind", std::string("sweep"));
  w.attr("config", sweep.dump(2));
  w.attr("runs_reused", reused);
  w.attr("shard", o.merge ? std::string("merged") : std::to_string(o.shard) + "/" + std::to_string(o.shards));
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

namespace {
/// " (tuned: lr 0.5, warmup 5% + cosine to 0; 28 tuning runs)" for a group whose runs use the
/// sweep's tuning comparison's choice; "" otherwise or before tuning.
std::string tuned_note(const SweepSpec& spec, const nlohmann::json& point) {
  if (!point.contains("optimizer") || !point["optimizer"].is_object() || !point["optimizer"].contains("tuned")) return "";
  if (point["optimizer"].value("per_point", false)) return " (tuned at each point)";
  if (spec.tune.empty()) return "";
  const std::string summary = spec.tune["summary"];
  if (!std::filesystem::exists(summary)) return "";
  for (const auto& row : nlohmann::json::parse(h5_read_string_attr(summary, "summary"))) {
    if (row.value("name", std::string()) != point["optimizer"]["tuned"]) continue;
    if (row.value("tuning_failed", false) || row["best_lr"].is_null()) return " (tuning failed)";
    char buf[160];
    std::snprintf(buf, sizeof buf, " (tuned: %s %g, %s; %lld tuning runs)", row.value("lr_key", std::string("lr")).c_str(),
                  row["best_lr"].get<double>(), row.value("schedule", std::string("?")).c_str(),
                  static_cast<long long>(row.value("tuning_runs", int64_t{0})));
    return buf;
  }
  return "";
}
}  // namespace

std::string sweep_table(const nlohmann::json& sweep, const nlohmann::json& rows) {
  const auto spec = read_spec(sweep);
  const std::string x = spec.plot.value("x", std::string()), group = spec.plot.value("group", std::string());
  if (x.empty()) return "";
  std::map<std::string, std::string> notes;  // group -> what its tuning chose
  std::vector<std::string> xs, groups;
  std::map<std::pair<std::string, std::string>, std::vector<double>> cells;
  for (const auto& r : rows) {
    const std::string xv = point_value(r["point"], x), gv = group.empty() ? "all" : point_value(r["point"], group);
    if (std::find(xs.begin(), xs.end(), xv) == xs.end()) xs.push_back(xv);
    if (std::find(groups.begin(), groups.end(), gv) == groups.end()) {
      groups.push_back(gv);
      notes[gv] = tuned_note(spec, r["point"]);
    }
    cells[{gv, xv}].push_back(r["final_train_loss"].is_null() ? INFINITY : r["final_train_loss"].get<double>());
  }
  std::string t = "| " + (group.empty() ? std::string("runs") : group) + " \\ " + x + " |";
  for (const auto& xv : xs) t += " " + xv + " |";
  t += "\n|---|";
  for (size_t i = 0; i < xs.size(); ++i) t += "---|";
  t += "\n";
  for (const auto& gv : groups) {
    t += "| " + gv + notes[gv] + " |";
    for (const auto& xv : xs) {
      auto it = cells.find({gv, xv});
      if (it == cells.end()) {
        t += " - |";
        continue;
      }
      std::vector<double> finite;
      for (double v : it->second)
        if (std::isfinite(v)) finite.push_back(v);
      char buf[96];
      if (finite.empty()) {
        std::snprintf(buf, sizeof buf, " diverged (%zu/%zu) |", it->second.size(), it->second.size());
      } else {
        const auto [m, sd] = mean_std(finite);
        const size_t div = it->second.size() - finite.size();
        // Blow-ups (finite but huge losses) in 3 significant digits, the rest to 4 decimals.
        const char* fmt = m >= 100 ? " %.3g ± %.3g" : " %.4f ± %.4f";
        int n = std::snprintf(buf, sizeof buf, fmt, m, sd);
        if (div > 0) std::snprintf(buf + n, sizeof buf - static_cast<size_t>(n), " (diverged %zu/%zu) |", div, it->second.size());
        else std::snprintf(buf + n, sizeof buf - static_cast<size_t>(n), " |");
      }
      t += buf;
    }
    t += "\n";
  }
  return t;
}

}  // namespace lopt
