#include "experiments/compare.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <set>

#include "common/config.h"
#include "common/errors.h"
#include "common/json_diff.h"
#include "experiments/h5_writer.h"
#include "experiments/train.h"
#include "experiments/train_jobs.h"

namespace lopt {

namespace {

constexpr int kMaxExtensions = 4;

struct Contender {
  std::string name;
  nlohmann::json entry;  ///< the contender as written in the comparison
  nlohmann::json optimizer;
  std::vector<double> lr_grid;              ///< sorted ascending; empty: a learned optimizer, no tuning
  std::vector<nlohmann::json> schedules;    ///< as written in the spec
  std::vector<double> wd_grid;              ///< empty: the optimizer's own weight decay
  nlohmann::json set = nlohmann::json::object();  ///< dotted keys of the base config this contender changes
  std::string lr_key = "optimizer.lr";           ///< the dotted key lr_grid sets (e.g. local_sgd.local_lr)
  std::vector<nlohmann::json> grid_points;       ///< cartesian product of "grid": {dotted key: value} each
  bool tuned() const { return !lr_grid.empty(); }
};

struct Spec {
  nlohmann::json base;
  std::vector<uint64_t> seeds, tuning_seeds;
  std::vector<Contender> contenders;
  std::string output_dir, summary;
  int64_t steps = 0;
};

/// One point of a baseline's search space.
struct Candidate {
  double lr;
  size_t schedule;
  int64_t wd;         ///< index into wd_grid, -1 without one
  int64_t point = -1; ///< index into grid_points, -1 without a grid
};

nlohmann::json default_schedules() {
  return nlohmann::json::array({{{"type", "constant"}},
                                {{"type", "warmup_cosine"}, {"warmup_fraction", 0.05}, {"final_fraction", 0.0}}});
}

std::string schedule_name(const nlohmann::json& s) {
  if (s.at("type") == "constant") return "constant";
  char buf[96];
  std::snprintf(buf, sizeof buf, "warmup %g%% + cosine to %g", 100 * s.value("warmup_fraction", 0.0),
                s.value("final_fraction", 0.0));
  return buf;
}

Spec read_spec(const nlohmann::json& j) {
  config_check(j.is_object(), "", "a comparison must be a JSON object with base, seeds, contenders, output_dir");
  ConfigReader r(j, "");
  Spec s;
  s.base = r.object("base");
  config_check(!s.base.contains("optimizer"), "/base/optimizer", "give optimizers per contender, not in base");
  s.seeds = r.get<std::vector<uint64_t>>("seeds", {0});
  config_check(!s.seeds.empty(), "/seeds", "needs at least one seed");
  s.tuning_seeds = r.get<std::vector<uint64_t>>("tuning_seeds", {1, 2});
  config_check(!s.tuning_seeds.empty(), "/tuning_seeds", "needs at least one seed");
  for (uint64_t t : s.tuning_seeds)
    config_check(std::find(s.seeds.begin(), s.seeds.end(), t) == s.seeds.end(), "/tuning_seeds",
                 "seed " + std::to_string(t) + " is also a report seed: baselines must be tuned on other seeds "
                 "than the ones reported");
  s.output_dir = r.require<std::string>("output_dir");
  s.summary = r.get<std::string>("summary", s.output_dir + ".h5");
  auto contenders = j.value("contenders", nlohmann::json::array());
  r.get<nlohmann::json>("contenders", nlohmann::json::array());
  r.finish();
  {
    nlohmann::json probe = s.base;
    probe["optimizer"] = {{"type", "sgd"}};
    try {
      s.steps = resolve_train_config(probe)["steps"];
    } catch (const ConfigError& e) {
      throw ConfigError("/base" + e.path(), e.message());
    }
  }
  config_check(contenders.is_array() && !contenders.empty(), "/contenders", "needs a non-empty list of {name, optimizer, lr_grid}");
  std::set<std::string> names;
  for (size_t i = 0; i < contenders.size(); ++i) {
    const std::string path = "/contenders/" + std::to_string(i);
    ConfigReader c(contenders[i], path);
    Contender ct;
    ct.name = c.require<std::string>("name");
    ct.entry = contenders[i];
    ct.optimizer = c.object("optimizer");
    ct.lr_grid = c.get<std::vector<double>>("lr_grid", {});
    auto schedules = c.get<nlohmann::json>("schedules", nullptr);
    ct.wd_grid = c.get<std::vector<double>>("weight_decay_grid", {});
    ct.set = c.object("set");
    ct.lr_key = c.get<std::string>("lr_key", ct.lr_key);
    auto grid = c.object("grid");
    c.finish();
    config_check(!ct.lr_key.empty() && ct.lr_key != "seed" && ct.lr_key != "output", c.path_of("lr_key"),
                 "must be a dotted config key such as optimizer.lr or local_sgd.local_lr");
    ct.grid_points = {nlohmann::json::object()};
    for (auto it = grid.begin(); it != grid.end(); ++it) {
      const std::string gp = c.path_of("grid") + "/" + it.key();
      config_check(it.value().is_array() && !it.value().empty(), gp, "must be a non-empty list of values");
      config_check(it.key() != ct.lr_key && it.key() != "seed" && it.key() != "output" && it.key() != "optimizer.schedule" &&
                       it.key() != "optimizer.weight_decay",
                   gp, "lr_grid, schedules, weight_decay_grid, seed and output have their own keys");
      std::vector<nlohmann::json> next;
      for (const auto& point : ct.grid_points)
        for (const auto& v : it.value()) {
          auto q = point;
          q[it.key()] = v;
          next.push_back(q);
        }
      ct.grid_points = next;
    }
    if (grid.empty()) ct.grid_points.clear();
    for (auto it = ct.set.begin(); it != ct.set.end(); ++it)
      config_check(it.key().rfind("optimizer", 0) != 0 && it.key() != "seed" && it.key() != "output", c.path_of("set") + "/" + it.key(),
                   "a contender's \"set\" changes the task or run length; optimizer, seed and output are the comparison's");
    config_check(!ct.name.empty() && ct.name.find_first_of("/ \t") == std::string::npos, c.path_of("name"),
                 "must be non-empty without '/' or spaces (it names files)");
    config_check(names.insert(ct.name).second, c.path_of("name"), "duplicate contender name '" + ct.name + "'");
    config_check(!ct.optimizer.empty(), c.path_of("optimizer"), "required (e.g. {\"type\": \"adamw\"})");
    for (double lr : ct.lr_grid) config_check(std::isfinite(lr) && lr > 0, c.path_of("lr_grid"), "learning rates must be > 0");
    std::sort(ct.lr_grid.begin(), ct.lr_grid.end());
    config_check(std::adjacent_find(ct.lr_grid.begin(), ct.lr_grid.end()) == ct.lr_grid.end(), c.path_of("lr_grid"),
                 "has a repeated learning rate");
    for (double wd : ct.wd_grid) config_check(std::isfinite(wd) && wd >= 0, c.path_of("weight_decay_grid"), "values must be >= 0");
    if (!ct.tuned()) {
      config_check(schedules.is_null(), c.path_of("schedules"), "only a contender with an lr_grid is tuned");
      config_check(ct.wd_grid.empty(), c.path_of("weight_decay_grid"), "only a contender with an lr_grid is tuned");
      config_check(ct.grid_points.empty(), c.path_of("grid"), "only a contender with an lr_grid is tuned");
    } else {
      config_check(ct.lr_key != "optimizer.lr" || !ct.optimizer.contains("lr"), c.path_of("optimizer") + "/lr",
                   "the lr comes from lr_grid");
      config_check(!ct.optimizer.contains("schedule"), c.path_of("optimizer") + "/schedule", "schedules come from \"schedules\"");
      config_check(ct.wd_grid.empty() || !ct.optimizer.contains("weight_decay"), c.path_of("optimizer") + "/weight_decay",
                   "the weight decay comes from weight_decay_grid");
      if (schedules.is_null()) schedules = default_schedules();
      config_check(schedules.is_array() && !schedules.empty(), c.path_of("schedules"), "must be a non-empty list");
      for (size_t k = 0; k < schedules.size(); ++k) {
        const std::string sp = c.path_of("schedules") + "/" + std::to_string(k);
        ConfigReader sr(schedules[k], sp);
        const auto type = sr.require<std::string>("type");
        config_check(type == "constant" || type == "warmup_cosine", sr.path_of("type"),
                     "unknown schedule \"" + type + "\" (valid: constant, warmup_cosine)");
        if (type == "warmup_cosine") {
          const double w = sr.get<double>("warmup_fraction", 0.0), f = sr.get<double>("final_fraction", 0.0);
          config_check(w >= 0 && w < 1, sr.path_of("warmup_fraction"), "must be in [0, 1)");
          config_check(f >= 0 && f <= 1, sr.path_of("final_fraction"), "must be in [0, 1]");
        }
        sr.finish();
        ct.schedules.push_back(schedules[k]);
      }
    }
    s.contenders.push_back(ct);
  }
  return s;
}

/// The resolved train config of contender c with candidate `cand` (null for a learned one) and seed.
nlohmann::json run_config(const Spec& spec, size_t c, const Candidate* cand, uint64_t seed, const std::string& file) {
  const Contender& ct = spec.contenders[c];
  auto cfg = spec.base;
  for (auto it = ct.set.begin(); it != ct.set.end(); ++it) set_dotted(cfg, it.key(), it.value());
  cfg["optimizer"] = ct.optimizer;
  if (cand != nullptr) {
    set_dotted(cfg, ct.lr_key, cand->lr);
    if (cand->point >= 0)
      for (auto it = ct.grid_points[static_cast<size_t>(cand->point)].begin(); it != ct.grid_points[static_cast<size_t>(cand->point)].end(); ++it)
        set_dotted(cfg, it.key(), it.value());
    cfg["optimizer"]["schedule"] = relative_schedule_config(ct.schedules[cand->schedule]);  // resolved against "steps"
    if (cand->wd >= 0) cfg["optimizer"]["weight_decay"] = ct.wd_grid[static_cast<size_t>(cand->wd)];
  }
  cfg["seed"] = seed;
  cfg["output"] = (std::filesystem::path(spec.output_dir) / file).string();
  try {
    return resolve_train_config(cfg);
  } catch (const ConfigError& e) {
    std::string p = e.path();
    if (p.rfind("/optimizer", 0) == 0) p = "/contenders/" + std::to_string(c) + p;
    else p = "/base" + p;
    throw ConfigError(p, e.message());
  }
}

std::string tune_file(const Contender& ct, size_t k, uint64_t seed) {
  return ct.name + "_tune" + std::to_string(k) + "_seed" + std::to_string(seed) + ".h5";
}
std::string report_file(const Contender& ct, uint64_t seed) { return ct.name + "_seed" + std::to_string(seed) + ".h5"; }

std::vector<Candidate> candidates_for(const Contender& ct, double lr) {
  std::vector<Candidate> out;
  const int64_t points = std::max<int64_t>(1, static_cast<int64_t>(ct.grid_points.size()));
  for (size_t s = 0; s < ct.schedules.size(); ++s)
    for (int64_t w = ct.wd_grid.empty() ? -1 : 0; w < static_cast<int64_t>(ct.wd_grid.size()); ++w)
      for (int64_t q = 0; q < points; ++q) out.push_back({lr, s, w, ct.grid_points.empty() ? -1 : q});
  return out;
}

/// Final figures of a finished run file: training loss (+inf when diverged) and the report metric
/// (e.g. test accuracy; NaN when diverged).
std::pair<double, double> run_figures(const std::string& path, const std::string& metric) {
  if (h5_read_string_attr(path, "status") != "completed")
    return {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()};
  const double loss = h5_read_double_attr(path, "final_train_loss");
  return {std::isfinite(loss) ? loss : std::numeric_limits<double>::infinity(), h5_read_double_attr(path, "final_" + metric)};
}

nlohmann::json finite_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

/// Candidates of a contender's initial grid: candidates_for's points at each learning rate of lr_grid.
size_t initial_candidates(const Contender& ct) { return ct.lr_grid.size() * candidates_for(ct, 0.0).size(); }

/// The input fingerprint (train.h) of a contender's runs: its checkpoint files, the same for every
/// candidate and seed.
std::string contender_inputs(const Spec& spec, size_t c) {
  const auto& ct = spec.contenders[c];
  Candidate first{0, 0, -1};
  if (ct.tuned()) first = candidates_for(ct, ct.lr_grid.front()).front();
  return input_fingerprint(run_config(spec, c, ct.tuned() ? &first : nullptr, spec.seeds.front(), report_file(ct, spec.seeds.front())));
}

/// A contender whose row is taken from the existing summary (`--only`).
struct Carried {
  size_t old_index = 0;  ///< its group in the old summary: c<old_index>
  nlohmann::json row;    ///< its row of the old summary's "summary" attribute
  bool inputs_checked = true;  ///< false: a checkpoint, but the old group predates input fingerprints
};

/// The refusal of `--only NAME` or `--leave-out NAME` when the comparison has no contender NAME;
/// it lists the names it has.
UsageError no_such_contender(const std::string& flag, const std::string& name, const std::vector<std::string>& names) {
  std::string all;
  for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
  return UsageError(flag + " " + name + ": the comparison has no contender of that name (it has " + all + ")");
}

/// Checks that every contender outside `only` can keep its row of the existing summary, and returns
/// those rows by contender index (empty when `only` names every contender). UsageError naming the
/// contender and the first difference otherwise, before any work.
std::map<size_t, Carried> plan_carry_over(const Spec& spec, const std::vector<std::string>& only) {
  std::map<size_t, Carried> out;
  if (only.empty()) return out;
  std::vector<std::string> names;
  for (const auto& ct : spec.contenders) names.push_back(ct.name);
  for (const auto& n : only)
    if (std::find(names.begin(), names.end(), n) == names.end()) throw no_such_contender("--only", n, names);
  const std::set<std::string> run(only.begin(), only.end());
  if (run.size() == spec.contenders.size()) return out;
  const std::string& path = spec.summary;
  const std::string again = "; run the whole comparison again (without --only)";
  if (!std::filesystem::exists(path))
    throw UsageError("--only: the other contenders' rows come from the summary " + path + ", which does not exist" + again);
  if (h5_read_string_attr(path, "kind") != "compare") throw UsageError("--only: " + path + " is not the summary of a comparison" + again);
  nlohmann::json old, old_rows, old_contenders;
  bool readable = true;
  try {
    old = nlohmann::json::parse(h5_read_string_attr(path, "config"));
    old_rows = nlohmann::json::parse(h5_read_string_attr(path, "summary"));
    old_contenders = old.at("contenders");
    for (const auto& list : {old_contenders, old_rows})
      for (const auto& e : list) readable = readable && e.is_object() && e.contains("name") && e["name"].is_string();
  } catch (const nlohmann::json::exception&) {
    readable = false;
  }
  if (!readable) throw UsageError("--only: " + path + " has no readable config or summary attribute" + again);
  // What every row depends on besides its own contender: the task and run (base) and the seeds.
  const nlohmann::json zero = nlohmann::json::array({0}), one_two = nlohmann::json::array({1, 2});
  const std::vector<std::pair<std::string, std::pair<nlohmann::json, nlohmann::json>>> shared = {
      {"/base", {old.value("base", nlohmann::json::object()), spec.base}},
      {"/seeds", {old.value("seeds", zero), nlohmann::json(spec.seeds)}},
      {"/tuning_seeds", {old.value("tuning_seeds", one_two), nlohmann::json(spec.tuning_seeds)}}};
  for (const auto& [key, pair] : shared) {
    const std::string d = config_difference(nlohmann::json{{key.substr(1), pair.first}}, nlohmann::json{{key.substr(1), pair.second}});
    if (!d.empty()) throw UsageError("--only: " + path + " was written by another comparison (" + d + ")" + again);
  }
  for (size_t c = 0; c < spec.contenders.size(); ++c) {
    const auto& ct = spec.contenders[c];
    if (run.count(ct.name)) continue;
    const std::string add = "; add --only " + ct.name + " to run it";
    size_t k = 0;
    while (k < old_contenders.size() && old_contenders[k].value("name", std::string()) != ct.name) ++k;
    if (k == old_contenders.size() || k >= old_rows.size() || old_rows[k].value("name", std::string()) != ct.name)
      throw UsageError("--only: " + ct.name + " has no row in " + path + add + " (or --leave-out " + ct.name +
                       " to write the summary without it)");
    const std::string d = config_difference(old_contenders[k], ct.entry);
    if (!d.empty()) throw UsageError("--only: " + ct.name + " ran with another config in " + path + " (" + d + ")" + add);
    // Its checkpoint must be the one it ran with; summaries written before the fingerprints were
    // recorded cannot say (run_compare says so aloud).
    const std::string inputs = contender_inputs(spec, c), recorded = h5_read_string_attr(path, "inputs", "c" + std::to_string(k));
    const bool unknown = !inputs.empty() && recorded.empty();
    if (!unknown && recorded != inputs)
      throw UsageError("--only: " + ct.name + "'s checkpoint changed since " + path + " was written" + add);
    out[c] = {k, old_rows[k], !unknown};
  }
  return out;
}

}  // namespace

nlohmann::json leave_out_contenders(nlohmann::json spec, const std::vector<std::string>& names) {
  if (names.empty()) return spec;
  if (!spec.contains("contenders") || !spec["contenders"].is_array())
    throw UsageError("--leave-out: the config has no \"contenders\" list");
  auto& list = spec["contenders"];
  std::vector<std::string> all;
  for (const auto& c : list) all.push_back(c.value("name", std::string("?")));
  for (const auto& n : names) {
    const auto it = std::find_if(list.begin(), list.end(), [&](const nlohmann::json& c) { return c.value("name", std::string()) == n; });
    if (it == list.end()) throw no_such_contender("--leave-out", n, all);
    list.erase(it);
  }
  if (list.empty()) throw UsageError("--leave-out: every contender of the comparison was left out; nothing to compare");
  return spec;
}

nlohmann::json relative_schedule_config(const nlohmann::json& s) {
  if (s.at("type") == "constant") return {{"type", "constant"}};
  return {{"type", "warmup_cosine"},
          {"warmup_fraction", s.value("warmup_fraction", 0.0)},
          {"final_fraction", s.value("final_fraction", 0.0)}};
}

std::pair<double, double> mean_std(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m += x / static_cast<double>(v.size());
  if (!std::isfinite(m)) return {m, std::numeric_limits<double>::quiet_NaN()};
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return {m, v.size() > 1 ? std::sqrt(ss / static_cast<double>(v.size() - 1)) : 0.0};
}

std::vector<CompareRun> expand_compare(const nlohmann::json& spec_json) {
  const auto spec = read_spec(spec_json);
  std::vector<CompareRun> runs;
  for (size_t c = 0; c < spec.contenders.size(); ++c) {
    const auto& ct = spec.contenders[c];
    if (!ct.tuned()) {
      for (uint64_t seed : spec.seeds) runs.push_back({c, -1, seed, run_config(spec, c, nullptr, seed, report_file(ct, seed))});
      continue;
    }
    std::vector<Candidate> cands;
    for (double lr : ct.lr_grid)
      for (const auto& cd : candidates_for(ct, lr)) cands.push_back(cd);
    for (size_t k = 0; k < cands.size(); ++k)
      for (uint64_t seed : spec.tuning_seeds)
        runs.push_back({c, static_cast<int64_t>(k), seed, run_config(spec, c, &cands[k], seed, tune_file(ct, k, seed))});
  }
  return runs;
}

std::vector<std::string> tuning_inequalities(const nlohmann::json& spec_json) {
  const auto spec = read_spec(spec_json);
  std::vector<std::string> out;
  const Contender* ref = nullptr;
  for (const auto& ct : spec.contenders) {
    if (!ct.tuned()) continue;
    if (ref == nullptr) {
      ref = &ct;
      continue;
    }
    const size_t a = initial_candidates(*ref), b = initial_candidates(ct);
    if (a != b)
      out.push_back(ct.name + " has " + std::to_string(b) + " initial tuning candidates, " + ref->name + " " + std::to_string(a));
    std::set<std::string> sa, sb;
    for (const auto& s : ref->schedules) sa.insert(schedule_name(s));
    for (const auto& s : ct.schedules) sb.insert(schedule_name(s));
    if (sa != sb) out.push_back(ct.name + " is tuned over other schedules than " + ref->name);
  }
  return out;
}

std::vector<std::string> compare_carry_over(const nlohmann::json& spec_json, const std::vector<std::string>& only) {
  const auto spec = read_spec(spec_json);
  std::vector<std::string> out;
  for (const auto& [c, kept] : plan_carry_over(spec, only)) out.push_back(spec.contenders[c].name);
  return out;
}

nlohmann::json run_compare(const nlohmann::json& spec_json, ProgressMode progress, bool fresh, const std::vector<std::string>& only,
                           const TrainJobs& jobs) {
  const auto spec = read_spec(spec_json);
  expand_compare(spec_json);  // every initial config is valid before any work
  const auto carried = plan_carry_over(spec, only);
  // The summary is rewritten under its own name, so the carried groups are copied from a copy of it.
  struct CarrySource {
    std::string path;
    ~CarrySource() {
      std::error_code ec;
      if (!path.empty()) std::filesystem::remove(path, ec);
    }
  } carry_source;
  if (!carried.empty()) {
    carry_source.path = spec.summary + ".carry.tmp";
    std::filesystem::copy_file(spec.summary, carry_source.path, std::filesystem::copy_options::overwrite_existing);
  }
  std::vector<std::string> carried_names;
  // The equal-tuning rule (compare.h): said aloud and recorded when a comparison breaks it.
  const auto unequal = tuning_inequalities(spec_json);
  for (const auto& u : unequal) std::fprintf(stderr, "compare: warning: unequal tuning: %s\n", u.c_str());
  std::filesystem::create_directories(spec.output_dir);
  int64_t reused = 0, total = 0;
  // Runs the trainings of a batch (in child processes with --jobs) except those whose finished file
  // of the same config and inputs exists.
  auto ensure_all = [&](const std::vector<PendingRun>& batch) {
    std::vector<PendingRun> todo;
    for (const auto& r : batch) {
      ++total;
      if (!fresh && finished_run_matches(r.config["output"], r.config)) ++reused;
      else todo.push_back(r);
    }
    train_runs(todo, jobs, "compare", [&](const nlohmann::json& cfg) { run_train(cfg, progress); });
  };

  nlohmann::json result = nlohmann::json::array();
  // The figure reported besides the training loss: test accuracy for classifiers, validation bits
  // per byte for language models.
  const std::string metric = report_metric_of(spec.base.value("task", nlohmann::json::object()));
  H5Writer w(spec.summary);
  w.attr("kind", std::string("compare"));
  w.attr("config", spec_json.dump(2));
  for (size_t c = 0; c < spec.contenders.size(); ++c) {
    const auto& ct = spec.contenders[c];
    const std::string g = "c" + std::to_string(c);
    if (auto it = carried.find(c); it != carried.end()) {
      w.copy_group(carry_source.path, "c" + std::to_string(it->second.old_index), g);
      auto row = it->second.row;
      row["carried_over"] = true;
      result.push_back(row);
      carried_names.push_back(ct.name);
      std::fprintf(stderr, "compare: %s: row kept from %s (--only)%s\n", ct.name.c_str(), spec.summary.c_str(),
                   it->second.inputs_checked ? "" : "; warning: its checkpoint is not checked (the row predates input fingerprints)");
      continue;
    }
    w.group(g);
    w.attr("name", ct.name, g);
    w.attr("inputs", contender_inputs(spec, c), g);
    nlohmann::json row = {{"name", ct.name}, {"tuned", ct.tuned()}};
    Candidate chosen{0, 0, -1};
    const Candidate* chosen_ptr = nullptr;
    if (ct.tuned()) {
      // Tuning on the tuning seeds, extending the LR grid while the best LR sits on its edge.
      std::vector<double> lrs = ct.lr_grid;
      std::vector<Candidate> cands;
      for (double lr : lrs)
        for (const auto& cd : candidates_for(ct, lr)) cands.push_back(cd);
      std::vector<double> score;
      int extensions = 0;
      bool at_edge = false;
      size_t best = 0;
      for (;;) {
        std::vector<PendingRun> batch;  // the candidates not scored yet, on every tuning seed
        for (size_t k = score.size(); k < cands.size(); ++k)
          for (uint64_t seed : spec.tuning_seeds) {
            char what[200];
            std::snprintf(what, sizeof what, "%s tuning lr %g %s seed %llu", ct.name.c_str(), cands[k].lr,
                          schedule_name(ct.schedules[cands[k].schedule]).c_str(), static_cast<unsigned long long>(seed));
            batch.push_back({run_config(spec, c, &cands[k], seed, tune_file(ct, k, seed)), what});
          }
        ensure_all(batch);
        for (size_t i = 0; i < batch.size(); i += spec.tuning_seeds.size()) {
          std::vector<double> losses;
          for (size_t j = i; j < i + spec.tuning_seeds.size(); ++j) losses.push_back(run_figures(batch[j].config["output"], metric).first);
          score.push_back(mean_std(losses).first);
        }
        best = static_cast<size_t>(std::min_element(score.begin(), score.end()) - score.begin());
        if (!std::isfinite(score[best])) break;  // every candidate diverged
        const bool low = cands[best].lr == lrs.front(), high = cands[best].lr == lrs.back();
        at_edge = low || high;
        if (!at_edge || extensions == kMaxExtensions) break;
        const double ratio = lrs.size() >= 2 ? (low ? lrs[1] / lrs[0] : lrs.back() / lrs[lrs.size() - 2]) : std::sqrt(10.0);
        const double lr = low ? lrs.front() / ratio : lrs.back() * ratio;
        std::fprintf(stderr, "compare: %s: best lr %g is on the %s edge of the grid, extending it to %g\n",
                     ct.name.c_str(), cands[best].lr, low ? "lower" : "upper", lr);
        if (low) lrs.insert(lrs.begin(), lr);
        else lrs.push_back(lr);
        for (const auto& cd : candidates_for(ct, lr)) cands.push_back(cd);
        ++extensions;
      }
      chosen = cands[best];
      chosen_ptr = &chosen;
      const bool all_diverged = !std::isfinite(score[best]);
      std::vector<double> tune_lr, tune_sched, tune_wd;
      for (const auto& cd : cands) {
        tune_lr.push_back(cd.lr);
        tune_sched.push_back(static_cast<double>(cd.schedule));
        tune_wd.push_back(cd.wd < 0 ? std::numeric_limits<double>::quiet_NaN() : ct.wd_grid[static_cast<size_t>(cd.wd)]);
      }
      w.dataset(g + "/tune_lr", tune_lr);
      w.dataset(g + "/tune_schedule", tune_sched);
      w.dataset(g + "/tune_weight_decay", tune_wd);
      if (!ct.grid_points.empty()) {
        std::vector<int64_t> tune_point;
        for (const auto& cd : cands) tune_point.push_back(cd.point);
        w.dataset(g + "/tune_grid_point", tune_point);
        w.attr("grid_points", nlohmann::json(ct.grid_points).dump(), g);
      }
      w.attr("lr_key", ct.lr_key, g);
      w.dataset(g + "/tune_score", score);
      w.attr("schedules", nlohmann::json(ct.schedules).dump(), g);
      w.attr("grid_extensions", static_cast<int64_t>(extensions), g);
      w.attr("best_at_grid_edge", static_cast<int64_t>(at_edge && std::isfinite(score[best])), g);
      w.attr("best_lr", all_diverged ? std::numeric_limits<double>::quiet_NaN() : chosen.lr, g);
      w.attr("tuning_failed", static_cast<int64_t>(all_diverged), g);
      if (all_diverged) chosen_ptr = nullptr;  // nothing to report: no config was chosen
      w.attr("best_schedule", ct.schedules[chosen.schedule].dump(), g);
      row["best_lr"] = all_diverged ? nlohmann::json(nullptr) : nlohmann::json(chosen.lr);
      row["schedule"] = all_diverged ? std::string("every candidate diverged in tuning") : schedule_name(ct.schedules[chosen.schedule]);
      // The chosen schedule relative to the run length, so that a sweep can reuse the tuned optimizer
      // on runs of another length (resolve_relative_schedule).
      if (!all_diverged) row["schedule_spec"] = ct.schedules[chosen.schedule];
      row["tuning_failed"] = all_diverged;
      if (chosen.wd >= 0) row["weight_decay"] = ct.wd_grid[static_cast<size_t>(chosen.wd)];
      if (chosen.point >= 0) {
        row["grid_choice"] = ct.grid_points[static_cast<size_t>(chosen.point)];
        w.attr("best_grid", ct.grid_points[static_cast<size_t>(chosen.point)].dump(), g);
      }
      if (ct.lr_key != "optimizer.lr") row["lr_key"] = ct.lr_key;
      row["grid_extensions"] = extensions;
      row["best_at_grid_edge"] = at_edge && std::isfinite(score[best]);
      row["tuning_score"] = finite_or_null(score[best]);
      row["tuning_candidates"] = cands.size();
      row["tuning_runs"] = cands.size() * spec.tuning_seeds.size();
      w.attr("tuning_runs", static_cast<int64_t>(cands.size() * spec.tuning_seeds.size()), g);
    } else {
      w.attr("best_lr", std::numeric_limits<double>::quiet_NaN(), g);
      w.attr("tuning_runs", static_cast<int64_t>(0), g);
      row["best_lr"] = nullptr;
      row["tuning_candidates"] = 0;
      row["tuning_runs"] = 0;
    }
    // Report runs on the held-out seeds.
    std::vector<double> finals, accs, curve;
    size_t curve_n = 0;
    nlohmann::json chosen_optimizer;
    const bool nothing_chosen = ct.tuned() && chosen_ptr == nullptr;
    std::vector<PendingRun> reports;
    if (!nothing_chosen) {
      for (uint64_t seed : spec.seeds)
        reports.push_back({run_config(spec, c, chosen_ptr, seed, report_file(ct, seed)), ct.name + " report seed " + std::to_string(seed)});
      chosen_optimizer = reports.back().config["optimizer"];
      ensure_all(reports);
    }
    for (size_t i = 0; i < spec.seeds.size(); ++i) {
      if (nothing_chosen) {
        finals.push_back(std::numeric_limits<double>::infinity());
        accs.push_back(std::numeric_limits<double>::quiet_NaN());
        continue;
      }
      const auto& cfg = reports[i].config;
      const auto [loss, acc] = run_figures(cfg["output"], metric);
      finals.push_back(loss);
      accs.push_back(acc);
      if (std::isfinite(loss)) {
        auto l = h5_read_doubles(cfg["output"], "train/loss");
        if (curve.empty()) curve.assign(l.size(), 0.0);
        if (l.size() == curve.size()) {
          for (size_t t = 0; t < l.size(); ++t) curve[t] += l[t];
          ++curve_n;
        }
      }
    }
    for (auto& v : curve) v /= static_cast<double>(std::max<size_t>(1, curve_n));
    const auto [mean, sd] = mean_std(finals);
    std::vector<double> finite_acc;
    for (double a : accs)
      if (std::isfinite(a)) finite_acc.push_back(a);
    const auto [acc_mean, acc_sd] = finite_acc.empty() ? std::make_pair(std::numeric_limits<double>::quiet_NaN(),
                                                                         std::numeric_limits<double>::quiet_NaN())
                                                       : mean_std(finite_acc);
    int64_t diverged = 0;
    for (double f : finals) diverged += std::isfinite(f) ? 0 : 1;
    w.attr("optimizer", chosen_optimizer.dump(), g);
    w.attr("mean_final_train_loss", mean, g);
    w.attr("std_final_train_loss", sd, g);
    w.attr("mean_final_" + metric, acc_mean, g);
    w.attr("std_final_" + metric, acc_sd, g);
    w.attr("diverged_seeds", diverged, g);
    w.attr("status", std::string(diverged == static_cast<int64_t>(finals.size()) ? "diverged" : "ok"), g);
    w.dataset(g + "/seeds", std::vector<int64_t>(spec.seeds.begin(), spec.seeds.end()));
    w.dataset(g + "/final_train_loss", finals);
    w.dataset(g + "/final_" + metric, accs);
    w.dataset(g + "/train_loss_mean", curve);
    row["optimizer"] = chosen_optimizer;
    row["status"] = diverged == static_cast<int64_t>(finals.size()) ? "diverged" : "ok";
    row["diverged_seeds"] = diverged;
    row["mean_final_train_loss"] = finite_or_null(mean);
    row["std_final_train_loss"] = finite_or_null(sd);
    nlohmann::json per_seed = nlohmann::json::array();
    for (double f : finals) per_seed.push_back(finite_or_null(f));
    row["final_train_loss"] = per_seed;
    row["report_metric"] = metric;
    row["mean_final_" + metric] = finite_or_null(acc_mean);
    row["std_final_" + metric] = finite_or_null(acc_sd);
    result.push_back(row);
  }
  std::fprintf(stderr, "compare: %lld of %lld runs reused (same resolved config and inputs)%s\n",
               static_cast<long long>(reused), static_cast<long long>(total), fresh ? ", --fresh" : "");
  w.attr("contenders", static_cast<int64_t>(spec.contenders.size()));
  w.attr("runs", total);
  w.attr("runs_reused", reused);
  w.attr("equal_tuning", static_cast<int64_t>(unequal.empty()));
  w.attr("tuning_inequalities", nlohmann::json(unequal).dump());
  w.attr("carried_over", nlohmann::json(carried_names).dump());
  w.attr("summary", result.dump());
  w.commit();
  return result;
}

}  // namespace lopt
