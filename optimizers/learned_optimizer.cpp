#include "optimizers/learned_optimizer.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <set>

#include "common/config.h"
#include "common/registry.h"
#include "optimizers/safetensors.h"

namespace lopt {

void register_builtin_learned_optimizers();  // optimizers/builtin_optimizers.cpp

namespace {
NamedRegistry<LearnedOptimizerType>& registry() {
  static NamedRegistry<LearnedOptimizerType> r("learned optimizer", [] { register_builtin_learned_optimizers(); });
  return r;
}
}  // namespace

void register_learned_optimizer_type(const std::string& type, LearnedOptimizerType t) { registry().add(type, std::move(t)); }

std::vector<std::string> learned_optimizer_types() { return registry().names(); }

bool is_learned_optimizer_type(const std::string& type) { return registry().contains(type); }

LearnedOptimizerType learned_optimizer_type(const std::string& type, const std::string& path) {
  return registry().get(type, path);
}

std::unique_ptr<LearnedOptimizer> make_learned_optimizer(const nlohmann::json& config, const std::string& path) {
  config_check(config.is_object(), path, "must be an object such as {\"type\": \"mulo\"}");
  std::string type = kDefaultLearnedOptimizer;
  if (config.contains("type")) {
    config_check(config["type"].is_string(), path + "/type", "must be a string (valid: " + registry().joined() + ")");
    type = config["type"].get<std::string>();
  }
  return learned_optimizer_type(type, path + "/type").make(config, path);
}

std::string checkpoint_weights_file(const std::string& checkpoint) {
  return std::filesystem::is_directory(checkpoint) ? (std::filesystem::path(checkpoint) / "model.safetensors").string()
                                                   : checkpoint;
}

nlohmann::json stored_checkpoint_config(const std::string& checkpoint) {
  const auto path = checkpoint_weights_file(checkpoint);
  const auto st = read_safetensors(path);
  auto it = st.metadata.find("lopt_config");
  if (it == st.metadata.end()) return nullptr;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(it->second);
  } catch (const std::exception&) {
    throw IoError(path, "metadata 'lopt_config' is not valid JSON", "rewrite the file with lopt meta-train");
  }
  if (!j.is_object()) throw IoError(path, "metadata 'lopt_config' must be a JSON object");
  return j;
}

std::string checkpoint_type(const std::string& checkpoint) {
  const auto j = stored_checkpoint_config(checkpoint);
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : std::string();
}

nlohmann::json checkpoint_learned_config(const std::string& checkpoint, const std::string& foreign_type) {
  auto j = stored_checkpoint_config(checkpoint);
  if (j.is_object()) return j;
  return learned_optimizer_type(foreign_type, "/checkpoint").resolve_checkpoint({{"type", foreign_type}}, checkpoint, "/checkpoint");
}

nlohmann::json complete_from_checkpoint(const nlohmann::json& config, const nlohmann::json& stored,
                                        const std::vector<std::string>& owned, const std::string& checkpoint,
                                        const std::string& path) {
  nlohmann::json out = config;
  out.erase("override");
  std::vector<std::string> overrides;
  if (config.contains("override")) {
    const auto& o = config["override"];
    config_check(o.is_array() && std::all_of(o.begin(), o.end(), [](const nlohmann::json& x) { return x.is_string(); }),
                 path + "/override", "must be a list of key names, e.g. [\"" + owned[owned.size() > 1 ? 1 : 0] + "\"]");
    for (const auto& k : o) {
      config_check(std::find(owned.begin(), owned.end(), k.get<std::string>()) != owned.end(), path + "/override",
                   "cannot override '" + k.get<std::string>() + "' (keys a checkpoint decides: " + join_names(owned) + ")");
      overrides.push_back(k);
    }
  }
  for (const auto& k : owned) {
    if (!stored.contains(k)) continue;
    const auto& theirs = stored[k];
    if (!config.contains(k)) {
      out[k] = theirs;
      continue;
    }
    if (config[k] == theirs) continue;
    if (std::find(overrides.begin(), overrides.end(), k) != overrides.end()) {
      std::fprintf(stderr, "warning: %s/%s = %s overrides the checkpoint's %s (%s)\n", path.c_str(), k.c_str(),
                   config[k].dump().c_str(), theirs.dump().c_str(), checkpoint.c_str());
      continue;
    }
    throw ConfigError(path + "/" + k, "the checkpoint " + checkpoint + " holds " + k + " = " + theirs.dump() +
                                          ", the config says " + config[k].dump() +
                                          "; drop the key to use the checkpoint's value, or add \"override\": [\"" +
                                          k + "\"]");
  }
  return out;
}

std::string foreign_network(const std::string& checkpoint) {
  const auto st = read_safetensors(checkpoint_weights_file(checkpoint));
  if (st.tensors.count("network.input.weight")) return "MetaMLP";
  if (st.tensors.count("b0") && st.tensors.count("w0.0")) return "CELO2MLP";
  return "";
}

void check_foreign_network(const std::string& checkpoint, const std::string& expected, const std::string& path) {
  if (stored_checkpoint_config(checkpoint).is_object()) return;  // lopt's own: the family check decides
  const auto found = foreign_network(checkpoint);
  if (found.empty() || found == expected) return;
  auto readers = [](const std::string& net) {
    return net == "MetaMLP" ? std::string("elo, mulo or small_fc_lopt") : std::string("celo2, celo2_base or mucelo2");
  };
  throw ConfigError(path + "/type", checkpoint + " holds a PyLO " + found + " network, not the " + expected +
                                        " this type reads: set \"type\" to " + readers(found));
}

void note_once(const std::string& text) {
  static std::mutex mutex;
  static std::set<std::string> printed;
  std::lock_guard<std::mutex> lock(mutex);
  if (printed.insert(text).second) std::fprintf(stderr, "note: %s\n", text.c_str());
}

}  // namespace lopt
