#include "common/config.h"

#include <algorithm>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace lopt {

ConfigReader::ConfigReader(const json& j, std::string path) : j_(j), path_(std::move(path)) {
  if (j_.is_null()) j_ = json::object();
  if (!j_.is_object()) throw ConfigError(path_, "expected a JSON object, got " + j_.dump());
}

json ConfigReader::object(const std::string& key) {
  used_.insert(key);
  if (!has(key)) return json::object();
  if (!j_.at(key).is_object()) throw ConfigError(path_of(key), "expected a JSON object, got " + j_.at(key).dump());
  return j_.at(key);
}

void ConfigReader::finish() const {
  for (auto it = j_.begin(); it != j_.end(); ++it) {
    if (!used_.count(it.key())) {
      std::string known;
      for (const auto& k : used_) known += (known.empty() ? "" : ", ") + k;
      throw ConfigError(path_of(it.key()), "unknown key (valid keys here: " + known + ")");
    }
  }
}

void config_check(bool cond, const std::string& path, const std::string& msg) {
  if (!cond) throw ConfigError(path, msg);
}

void config_check_finite_nonneg(double v, const std::string& path) {
  config_check(std::isfinite(v) && v >= 0, path, "must be finite and >= 0, got " + std::to_string(v));
}

namespace {
/// The deepest nesting of objects / arrays a config may have (JSON values are copied recursively).
constexpr int kMaxJsonDepth = 100;

/// ConfigError naming `what` when a JSON parse has gone deeper than kMaxJsonDepth.
void check_json_depth(int depth, const std::string& what) {
  // JSON values are copied and destroyed recursively: a value nested ~100k deep overflows the stack.
  if (depth > kMaxJsonDepth)
    throw ConfigError("", what + " nests objects or arrays more than " + std::to_string(kMaxJsonDepth) +
                              " levels deep; lopt's configs need fewer than 10");
}
}  // namespace

json parse_json_strict(const std::string& text, const std::string& what) {
  // Duplicate keys are an error (nlohmann keeps the last one silently): track the keys of every
  // open object.
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  auto cb = [&](int depth, json::parse_event_t event, json& parsed) {
    check_json_depth(depth, what);
    if (event == json::parse_event_t::object_start) keys.emplace_back();
    else if (event == json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
    else if (event == json::parse_event_t::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second &&
             duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  json out;
  try {
    out = json::parse(text, cb);
  } catch (const json::exception& e) {  // syntax errors, and numbers beyond double range (1e400)
    std::string msg = e.what();
    if (auto p = msg.find("] "); p != std::string::npos) msg = msg.substr(p + 2);
    throw ConfigError("", what + " is not valid JSON: " + msg);
  }
  if (!duplicate.empty()) throw ConfigError("", what + " has the key \"" + duplicate + "\" twice in one object; keep one");
  return out;
}

json load_json_file(const std::string& path) {
  if (std::filesystem::is_directory(path))
    throw ConfigError("", path + " is a folder, not a JSON config file (pass a file such as experiments/configs/quickstart.json)");
  std::ifstream in(path);
  if (!in) throw IoError(path, "cannot open the config file", "check the path passed to --config");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_json_strict(ss.str(), path);
}

namespace {
std::vector<std::string> split_dots(const std::string& key) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : key) {
    if (c == '.') {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  parts.push_back(cur);
  for (const auto& p : parts)
    if (p.empty()) throw UsageError("malformed key '" + key + "': empty component");
  return parts;
}
}  // namespace

namespace {
/// The element of list `node` (at JSON path `where`) that `part` names: an index, or the "name" of
/// one of its objects (a contender, a route).
json& list_element(json& node, const std::string& part, const std::string& where) {
  if (!part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    const size_t i = std::stoul(part);
    if (i < node.size()) return node[i];
  } else {
    for (auto& e : node)
      if (e.is_object() && e.contains("name") && e["name"] == part) return e;
  }
  std::string names;
  for (const auto& e : node)
    if (e.is_object() && e.contains("name") && e["name"].is_string()) names += (names.empty() ? "" : ", ") + e["name"].get<std::string>();
  throw ConfigError(where, "is a list of " + std::to_string(node.size()) + ": '" + part + "' is neither an index 0.." +
                               std::to_string(static_cast<int64_t>(node.size()) - 1) + " nor the name of an element" +
                               (names.empty() ? std::string() : " (names: " + names + ")"));
}
}  // namespace

void set_dotted(json& config, const std::string& dotted_key, const json& value) {
  json* node = &config;
  auto parts = split_dots(dotted_key);
  std::string where;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (node->is_array()) {
      node = &list_element(*node, parts[i], where);
    } else {
      if (!node->is_object()) throw ConfigError(where + "/" + parts[i], "cannot set a key inside a non-object");
      node = &(*node)[parts[i]];
      if (node->is_null()) *node = json::object();
    }
    where += "/" + parts[i];
  }
  if (node->is_array()) {
    list_element(*node, parts.back(), where) = value;
    return;
  }
  if (!node->is_object() && !node->is_null())
    throw ConfigError(where, "is " + node->dump() + ", not an object: cannot set '" + parts.back() + "' inside it");
  (*node)[parts.back()] = value;
}

const json& get_dotted(const json& config, const std::string& dotted_key) {
  const json* node = &config;
  std::string path;
  for (const auto& p : split_dots(dotted_key)) {
    path += "/" + p;
    if (!node->is_object() || !node->contains(p)) throw ConfigError(path, "no such key");
    node = &node->at(p);
  }
  return *node;
}

void apply_override(json& config, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw UsageError("override '" + assignment + "' must look like key.sub=value (e.g. --set optimizer.lr=3e-4)");
  std::string key = assignment.substr(0, eq);
  std::string text = assignment.substr(eq + 1);
  json value;
  try {
    value = json::parse(text, [&](int depth, json::parse_event_t, json&) {
      if (depth > kMaxJsonDepth)
        throw UsageError("--set " + key + ": the value nests more than " + std::to_string(kMaxJsonDepth) + " levels deep");
      return true;
    });
  } catch (const json::out_of_range&) {
    throw UsageError("--set " + assignment + ": the number is out of range");
  } catch (const json::parse_error&) {
    value = text;
  }
  set_dotted(config, key, value);
}

void write_text_atomic(const std::string& path, const std::string& text) {
  namespace fs = std::filesystem;
  fs::path p(path);
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw IoError(tmp, "cannot open for writing", "check that the folder is writable");
    out << text;
    out.close();
    if (!out) {
      std::error_code ignored;
      fs::remove(tmp, ignored);
      throw IoError(path, "write failed, the file was not written", "is the disk full? earlier files are unchanged");
    }
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  if (ec) throw IoError(path, "cannot rename temporary file: " + ec.message());
}

}  // namespace lopt
