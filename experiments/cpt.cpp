#include "experiments/cpt.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include "common/config.h"
#include "common/errors.h"
#include "common/rng.h"
#include "common/signals.h"
#include "experiments/h5_writer.h"
#include "experiments/train.h"
#include "meta/truncated_step.h"
#include "optimizers/optimizer.h"
#include "optimizers/safetensors.h"
#include "tasks/transformer.h"

namespace lopt {

namespace {

/// The folder a corpus is read from: the data_dir of the first phase on that corpus (default: the
/// corpus's Debian package folder).
std::string dir_of(const nlohmann::json& phases, const std::string& corpus) {
  for (const auto& p : phases)
    if (p["corpus"] == corpus) return p.value("data_dir", std::string());
  return "";
}

/// The task config of a phase (its corpus and replay) or of an evaluation corpus (no replay).
nlohmann::json task_for(const nlohmann::json& base, const nlohmann::json& phases, const std::string& corpus, double replay,
                        const std::string& replay_corpus) {
  auto t = base;
  t["corpus"] = corpus;
  t["data_dir"] = dir_of(phases, corpus);
  t.erase("replay_corpus");
  t.erase("replay_data_dir");
  t.erase("replay_fraction");
  if (replay > 0) {
    t["replay_corpus"] = replay_corpus;
    t["replay_data_dir"] = dir_of(phases, replay_corpus);
    t["replay_fraction"] = replay;
  }
  return t;
}

/// The optimizer of phase p: the configured optimizer with this phase's schedule.
nlohmann::json phase_optimizer(const nlohmann::json& cfg, size_t p) {
  const auto& sc = cfg["schedule"];
  const int64_t steps = cfg["phases"][p]["steps"];
  auto opt = cfg["optimizer"];
  auto n = [&](const char* key) { return static_cast<int64_t>(std::llround(sc[key].get<double>() * static_cast<double>(steps))); };
  if (sc["type"] == "constant") {
    opt["schedule"] = {{"type", "constant"}};
  } else if (sc["type"] == "rewarm") {
    opt["schedule"] = {{"type", "warmup_cosine"},
                       {"warmup_steps", std::max<int64_t>(0, std::min(n("warmup_fraction"), steps - 1))},
                       {"total_steps", steps},
                       {"final_fraction", sc["final_fraction"]}};
  } else {
    const bool first = p == 0;
    opt["schedule"] = {{"type", "infinite"},
                       {"warmup_steps", first ? n("warmup_fraction") : 0},
                       {"cooldown_steps", first ? n("cooldown_fraction") : 0},
                       {"constant_fraction", sc["constant_fraction"]},
                       {"total_steps", steps},
                       {"anneal_steps", n("anneal_fraction")},
                       {"final_fraction", sc["final_fraction"]}};
  }
  return opt;
}

int64_t anneal_start(const nlohmann::json& cfg, size_t p) {
  const auto s = phase_optimizer(cfg, p)["schedule"];  // a copy: the optimizer config is a temporary
  return s["type"] == "infinite" ? s["total_steps"].get<int64_t>() - s["anneal_steps"].get<int64_t>() : -1;
}

}  // namespace

nlohmann::json resolve_cpt_config(const nlohmann::json& config) {
  config_check(config.is_object(), "", "a cpt config must be a JSON object with task, optimizer, schedule, phases");
  ConfigReader r(config, "");
  nlohmann::json out;
  auto task = r.object("task");
  config_check(task.value("type", std::string("transformer_lm")) == "transformer_lm", "/task/type",
               "continual pre-training runs a transformer_lm task");
  out["task"] = TransformerConfig::from_json(task, "/task").to_json();
  auto opt = r.object("optimizer");
  config_check(!opt.empty(), "/optimizer", "required (e.g. {\"type\": \"adamw\", \"lr\": 3e-3})");
  config_check(!opt.contains("schedule"), "/optimizer/schedule", "the schedule of every phase comes from \"schedule\"");
  out["optimizer"] = make_optimizer(opt, "/optimizer")->hyperparams();
  out["optimizer"].erase("schedule");
  {
    ConfigReader s(r.object("schedule"), "/schedule");
    nlohmann::json sc;
    sc["type"] = s.get<std::string>("type", "rewarm");
    config_check(sc["type"] == "rewarm" || sc["type"] == "infinite" || sc["type"] == "constant", s.path_of("type"),
                 "must be \"rewarm\" (warmup + cosine in every phase), \"infinite\" (warmup, cooldown, constant, anneal) "
                 "or \"constant\" (e.g. for a learned optimizer)");
    sc["warmup_fraction"] = s.get<double>("warmup_fraction", 0.01);
    sc["final_fraction"] = s.get<double>("final_fraction", 0.1);
    if (sc["type"] == "infinite") {
      sc["cooldown_fraction"] = s.get<double>("cooldown_fraction", 0.2);
      sc["constant_fraction"] = s.get<double>("constant_fraction", 0.5);
      sc["anneal_fraction"] = s.get<double>("anneal_fraction", 0.1);
    }
    s.finish();
    for (auto it = sc.begin(); it != sc.end(); ++it)
      if (it.key() != "type")
        config_check(it.value().get<double>() >= 0 && it.value().get<double>() <= 1, "/schedule/" + it.key(), "must be in [0, 1]");
    if (sc["type"] == "infinite")
      config_check(sc["warmup_fraction"].get<double>() + sc["cooldown_fraction"].get<double>() + sc["anneal_fraction"].get<double>() <= 1,
                   "/schedule", "warmup_fraction + cooldown_fraction + anneal_fraction must be <= 1");
    out["schedule"] = sc;
  }
  auto phases = r.get<nlohmann::json>("phases", nlohmann::json::array());
  config_check(phases.is_array() && !phases.empty(), "/phases", "needs a list of {corpus, steps[, replay_fraction, replay_corpus]}");
  out["phases"] = nlohmann::json::array();
  std::vector<std::string> corpora;
  for (size_t i = 0; i < phases.size(); ++i) {
    const std::string path = "/phases/" + std::to_string(i);
    ConfigReader p(phases[i], path);
    nlohmann::json ph;
    ph["corpus"] = p.require<std::string>("corpus");
    ph["steps"] = p.require<int64_t>("steps");
    ph["replay_fraction"] = p.get<double>("replay_fraction", 0.0);
    const std::string first = i == 0 ? ph["corpus"].get<std::string>() : out["phases"][0]["corpus"].get<std::string>();
    ph["replay_corpus"] = p.get<std::string>("replay_corpus", first);
    ph["data_dir"] = p.get<std::string>("data_dir", "");
    p.finish();
    config_check(ph["steps"].get<int64_t>() >= 2, p.path_of("steps"), "must be >= 2");
    try {
      auto upto = out["phases"];
      upto.push_back(ph);
      TransformerConfig::from_json(task_for(out["task"], upto, ph["corpus"], ph["replay_fraction"], ph["replay_corpus"]), path);
    } catch (const ConfigError& e) {
      std::string k = e.path().substr(e.path().rfind('/') + 1);
      throw ConfigError(path + "/" + (k == "corpus" || k == "replay_corpus" || k == "replay_fraction" ? k : std::string("corpus")), e.message());
    }
    out["phases"].push_back(ph);
    if (std::find(corpora.begin(), corpora.end(), ph["corpus"].get<std::string>()) == corpora.end()) corpora.push_back(ph["corpus"]);
  }
  out["eval_corpora"] = r.get<std::vector<std::string>>("eval_corpora", corpora);
  config_check(!out["eval_corpora"].empty(), "/eval_corpora", "needs at least one corpus");
  for (const auto& c : out["eval_corpora"]) {
    try {
      TransformerConfig::from_json(task_for(out["task"], out["phases"], c, 0, ""), "/eval_corpora");
    } catch (const ConfigError& e) {
      throw ConfigError("/eval_corpora", e.message());
    }
  }
  out["eval_every"] = r.get<int64_t>("eval_every", 100);
  out["eval_examples"] = r.get<int64_t>("eval_examples", 64);
  out["seed"] = r.get<uint64_t>("seed", 0);
  out["checkpoint_every"] = r.get<int64_t>("checkpoint_every", 200);
  out["output"] = r.get<std::string>("output", "runs/cpt.h5");
  r.finish();
  config_check(out["eval_every"].get<int64_t>() >= 1, "/eval_every", "must be >= 1");
  config_check(out["eval_examples"].get<int64_t>() >= 1, "/eval_examples", "must be >= 1");
  config_check(out["checkpoint_every"].get<int64_t>() >= 1, "/checkpoint_every", "must be >= 1");
  config_check(!out["output"].get<std::string>().empty(), "/output", "must name an HDF5 file");
  for (size_t p = 0; p < out["phases"].size(); ++p) make_optimizer(phase_optimizer(out, p), "/optimizer");
  return out;
}

namespace {

/// Everything a run needs to continue exactly: the parameters and optimizer state, where it is,
/// the data stream, the pre-anneal parameters, the routing reference and the logs.
struct CptState {
  size_t phase = 0;
  int64_t step_in_phase = 0, global_step = 0;
  OptState opt;
  ParamSet pre_anneal;                         ///< parameters at the start of the anneal (infinite)
  std::vector<torch::Tensor> routing_ref;      ///< per MoE layer, sorted experts [N, k] at CPT start
  nlohmann::json stream = nullptr;             ///< BatchStream state of the current phase
  nlohmann::json log = {{"step", nlohmann::json::array()}, {"loss", nlohmann::json::array()},
                        {"lr", nlohmann::json::array()},   {"phase", nlohmann::json::array()},
                        {"eval", nlohmann::json::array()}, {"phase_seconds", nlohmann::json::array()},
                        {"phase_end", nlohmann::json::array()}};
};

std::string checkpoint_path(const nlohmann::json& cfg) { return cfg["output"].get<std::string>() + ".ckpt.safetensors"; }

void save_checkpoint(const nlohmann::json& cfg, const CptState& s) {
  SafeTensors st;
  InnerState cur;
  cur.opt = s.opt;
  std::vector<InnerState> states = {cur};
  if (!s.pre_anneal.tensors.empty()) {
    InnerState pa;
    pa.opt.params = s.pre_anneal;
    states.push_back(pa);
  }
  auto inner = save_inner_states(states, "cpt", st);
  for (size_t l = 0; l < s.routing_ref.size(); ++l) st.tensors["route." + std::to_string(l)] = s.routing_ref[l].to(torch::kFloat64);
  nlohmann::json meta = {{"config", cfg},           {"phase", s.phase},   {"step_in_phase", s.step_in_phase},
                         {"global_step", s.global_step}, {"stream", s.stream}, {"inner", inner},
                         {"routing_layers", s.routing_ref.size()}, {"log", s.log}};
  st.metadata["lopt_cpt"] = meta.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  write_safetensors(checkpoint_path(cfg), st);
}

bool load_checkpoint(const nlohmann::json& cfg, CptState& s) {
  const auto path = checkpoint_path(cfg);
  if (!std::filesystem::exists(path)) return false;
  auto st = read_safetensors(path);
  auto it = st.metadata.find("lopt_cpt");
  if (it == st.metadata.end()) throw IoError(path, "not a cpt checkpoint (no lopt_cpt metadata)");
  auto meta = nlohmann::json::parse(it->second);
  if (meta["config"] != cfg)
    throw UsageError("checkpoint " + path + " was written by a different cpt config (" +
                     config_difference(meta["config"], cfg) + "); use the same config to resume, or another output");
  auto states = load_inner_states(meta["inner"], "cpt", st, path);
  s.opt = states[0].opt;
  if (states.size() > 1) s.pre_anneal = states[1].opt.params;
  s.phase = meta["phase"];
  s.step_in_phase = meta["step_in_phase"];
  s.global_step = meta["global_step"];
  s.stream = meta["stream"];
  s.log = meta["log"];
  s.routing_ref.clear();
  for (size_t l = 0; l < meta["routing_layers"].get<size_t>(); ++l)
    s.routing_ref.push_back(st.tensors.at("route." + std::to_string(l)).to(torch::kInt64));
  return true;
}

/// Per MoE layer, each token's chosen experts sorted ([N, k]) on `tokens` (evaluation routing).
std::vector<torch::Tensor> routing_sets(const TransformerLmTask& task, const ParamSet& params, const torch::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  std::vector<Routing> routings;
  task.forward(params, tokens.narrow(1, 0, tokens.size(1) - 1), nullptr, &routings);
  std::vector<torch::Tensor> out;
  for (auto& r : routings) out.push_back(std::get<0>(r.experts.sort(1)));
  return out;
}

}  // namespace

void check_cpt_output(const std::string& output, const nlohmann::json& resolved, bool resume, bool overwrite) {
  if (!std::filesystem::exists(output) || overwrite) return;
  if (!resume) throw UsageError(output + " exists (a finished run): pass --overwrite to replace it, or choose another -o");
  nlohmann::json stored;
  try {
    stored = nlohmann::json::parse(h5_read_string_attr(output, "config"));
  } catch (const std::exception&) {
    throw UsageError(output + " exists and is not a cpt result lopt can read: choose another -o, or pass --overwrite");
  }
  const auto diff = config_difference(stored, resolved);
  if (diff.empty())
    throw UsageError(output + " is already finished with this config: nothing to resume (pass --overwrite to run it again)");
  throw UsageError(output + " is a finished run of another config (" + diff +
                   "): --resume continues only an unfinished run of the same config; choose another -o, or pass --overwrite");
}

nlohmann::json run_cpt(const nlohmann::json& raw, ProgressMode progress_mode, bool resume, int64_t stop_after) {
  const auto cfg = resolve_cpt_config(raw);
  const std::string output = cfg["output"];
  check_output_writable(output);
  const uint64_t seed = cfg["seed"];
  const int64_t eval_every = cfg["eval_every"], eval_examples = cfg["eval_examples"], ckpt_every = cfg["checkpoint_every"];
  const auto& phases = cfg["phases"];
  int64_t total = 0;
  for (const auto& p : phases) total += p["steps"].get<int64_t>();

  // Evaluation tasks (one per corpus) and the routing probe: the first eval_examples validation
  // windows of the first eval corpus.
  std::vector<std::string> eval_corpora = cfg["eval_corpora"];
  std::vector<std::unique_ptr<TransformerLmTask>> eval_tasks;
  for (const auto& c : eval_corpora)
    eval_tasks.push_back(std::make_unique<TransformerLmTask>(TransformerConfig::from_json(task_for(cfg["task"], phases, c, 0, ""))));
  const bool moe = eval_tasks.front()->config().moe.enabled();
  const auto probe = eval_tasks.front()->data()->examples(
      Split::validation, 0, std::min(eval_examples, eval_tasks.front()->data()->num_examples(Split::validation))).at("tokens");

  CptState s;
  if (!(resume && load_checkpoint(cfg, s))) {
    if (std::filesystem::exists(checkpoint_path(cfg)))
      throw UsageError(checkpoint_path(cfg) + " exists: pass --resume to continue it, or choose another output");
    auto gen = make_generator(derive_seed(seed, "init"));
    s.opt.params = eval_tasks.front()->init(gen);
    s.stream = nullptr;
  }
  auto evaluate = [&](const ParamSet& params) {
    nlohmann::json e = {{"step", s.global_step}, {"phase", s.phase}};
    for (size_t c = 0; c < eval_corpora.size(); ++c) {
      auto m = eval_tasks[c]->evaluate(params, Split::validation, eval_examples);
      for (const auto& [k, v] : m)
        if (k == "loss" || k.rfind("mri_", 0) == 0) e[eval_corpora[c] + "_" + k] = v;
    }
    if (moe && !s.routing_ref.empty()) {
      auto now = routing_sets(*eval_tasks.front(), params, probe);
      for (size_t l = 0; l < now.size(); ++l)
        e["routing_change_" + std::to_string(l)] = (now[l] != s.routing_ref[l]).any(1).to(torch::kFloat64).mean().item<double>();
    }
    return e;
  };
  if (s.global_step == 0 && s.log["eval"].empty()) s.log["eval"].push_back(evaluate(s.opt.params));

  Progress progress(total, "cpt", progress_mode, s.global_step);
  char status[160] = "";
  while (s.phase < phases.size()) {
    const auto& ph = phases[s.phase];
    const int64_t steps = ph["steps"];
    TransformerLmTask task(
        TransformerConfig::from_json(task_for(cfg["task"], phases, ph["corpus"], ph["replay_fraction"], ph["replay_corpus"])));
    auto opt = make_optimizer(phase_optimizer(cfg, s.phase));
    BatchStream stream(task.data(), Split::train, task.batch_size(), derive_seed(seed, "data" + std::to_string(s.phase)));
    const int64_t anneal_at = anneal_start(cfg, s.phase);
    if (s.step_in_phase == 0) {
      // A fresh optimizer state; an "infinite" run continues from the parameters before the anneal.
      if (s.phase > 0 && !s.pre_anneal.tensors.empty()) s.opt.params = s.pre_anneal;
      s.pre_anneal = ParamSet();
      s.opt = opt->init(s.opt.params.clone());
      if (s.phase == 1 && moe) s.routing_ref = routing_sets(*eval_tasks.front(), s.opt.params, probe);
      s.log["phase_seconds"].push_back(0.0);
    } else {
      stream.restore(s.stream);
    }
    auto t0 = std::chrono::steady_clock::now();
    const double seconds_before = s.log["phase_seconds"][s.phase];
    for (; s.step_in_phase < steps;) {
      if (s.step_in_phase == anneal_at) s.pre_anneal = s.opt.params.clone();
      auto batch = stream.next();
      auto p = s.opt.params.detached_requiring_grad();
      auto loss = task.loss(p, batch);
      const double lv = loss.item<double>();
      if (!std::isfinite(lv)) throw DivergenceError(s.global_step + 1, lv);
      auto grads = torch::autograd::grad({loss}, p.tensors);
      const double lr = opt->lr_at(s.opt.step, s.opt.params.info[0]);
      opt->update_(s.opt, grads, loss.detach());
      ++s.step_in_phase;
      ++s.global_step;
      s.log["step"].push_back(s.global_step);
      s.log["loss"].push_back(lv);
      s.log["lr"].push_back(lr);
      s.log["phase"].push_back(s.phase);
      s.log["phase_seconds"][s.phase] =
          seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const bool phase_end = s.step_in_phase == steps;
      if (s.global_step % eval_every == 0 || phase_end) {
        auto e = evaluate(s.opt.params);
        std::snprintf(status, sizeof status, "phase %zu loss %.4f %s %.4f", s.phase, lv, eval_corpora.front().c_str(),
                      e[eval_corpora.front() + "_loss"].get<double>());
        if (phase_end) s.log["phase_end"].push_back(e);
        s.log["eval"].push_back(std::move(e));
      }
      const bool stop = stop_after >= 0 && s.global_step >= stop_after;
      if (!phase_end && (s.global_step % ckpt_every == 0 || interrupted() || stop)) {
        s.stream = stream.state();
        save_checkpoint(cfg, s);
      }
      progress.update(s.global_step, status);
      if (stop && !phase_end) return {{"stopped_at", s.global_step}};
      if (!phase_end && interrupted())
        throw_if_interrupted("continual pre-training", "a checkpoint was written: rerun with --resume to continue");
    }
    // The boundary checkpoint starts the next phase (a fresh optimizer state, and for "infinite" the
    // parameters before this phase's anneal).
    s.phase += 1;
    s.step_in_phase = 0;
    s.stream = nullptr;
    if (s.phase < phases.size()) {
      save_checkpoint(cfg, s);
      if (stop_after >= 0 && s.global_step >= stop_after) return {{"stopped_at", s.global_step}};
      if (interrupted())
        throw_if_interrupted("continual pre-training", "a checkpoint was written: rerun with --resume to continue");
    }
  }
  progress.finish(status);

  // Summary and HDF5.
  nlohmann::json summary = {{"output", output}};
  const auto& log = s.log;
  const auto& last = log["eval"].back();
  const auto& end0 = log["phase_end"].front();
  H5Writer w(output);
  w.attr("kind", std::string("cpt"));
  w.attr("config", cfg.dump(2));
  w.attr("status", std::string("completed"));
  int64_t tokens_per_step = cfg["task"]["batch_size"].get<int64_t>() * cfg["task"]["context"].get<int64_t>();
  for (size_t p = 0; p < phases.size(); ++p) {
    const double secs = log["phase_seconds"][p];
    const double tps = static_cast<double>(phases[p]["steps"].get<int64_t>() * tokens_per_step) / std::max(1e-9, secs);
    w.attr("tokens_per_s_phase" + std::to_string(p), tps);
    summary["tokens_per_s"].push_back(tps);
  }
  for (const auto& c : eval_corpora) {
    const double fin = last[c + "_loss"], after0 = end0[c + "_loss"];
    w.attr("final_" + c + "_loss", fin);
    w.attr("phase0_end_" + c + "_loss", after0);
    w.attr("forgetting_" + c, fin - after0);
    summary["final_" + c + "_loss"] = fin;
    summary["forgetting_" + c] = fin - after0;
  }
  w.group("train");
  auto ints = [](const nlohmann::json& a) { return a.get<std::vector<int64_t>>(); };
  auto dbls = [](const nlohmann::json& a) { return a.get<std::vector<double>>(); };
  w.dataset("train/step", ints(log["step"]));
  w.dataset("train/loss", dbls(log["loss"]));
  w.dataset("train/lr", dbls(log["lr"]));
  w.dataset("train/phase", ints(log["phase"]));
  w.group("eval");
  std::set<std::string> keys;
  for (const auto& e : log["eval"])
    for (auto it = e.begin(); it != e.end(); ++it) keys.insert(it.key());
  for (const auto& k : keys) {
    std::vector<double> v;
    for (const auto& e : log["eval"]) v.push_back(e.contains(k) ? e[k].get<double>() : NAN);
    w.dataset("eval/" + k, v);
  }
  w.commit();
  std::error_code ec;
  std::filesystem::remove(checkpoint_path(cfg), ec);
  return summary;
}

}  // namespace lopt
