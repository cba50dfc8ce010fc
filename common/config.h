#pragma once
/// JSON configuration helpers: typed reads that track the JSON path of every key, reject
/// unknown keys, and load files / apply command-line overrides with actionable errors.
#include <nlohmann/json.hpp>

#include <set>
#include <string>
#include <vector>

#include "common/errors.h"

namespace lopt {

using json = nlohmann::json;

/// Reads one JSON object, remembering which keys were read so `finish()` can reject the rest.
/// Example: `ConfigReader r(j, "/task"); int w = r.get<int>("width", 128); r.finish();`
class ConfigReader {
 public:
  ConfigReader(const json& j, std::string path);

  /// Value of `key`, or `fallback` when absent. Throws ConfigError on a type mismatch.
  template <class T>
  T get(const std::string& key, const T& fallback) {
    used_.insert(key);
    if (!j_.contains(key) || j_.at(key).is_null()) return fallback;
    return convert<T>(key);
  }
  /// Value of `key`; throws ConfigError when it is absent.
  template <class T>
  T require(const std::string& key) {
    used_.insert(key);
    if (!j_.contains(key) || j_.at(key).is_null()) throw ConfigError(path_of(key), "required key is missing");
    return convert<T>(key);
  }
  /// The raw sub-object at `key` (an empty object when absent).
  json object(const std::string& key);
  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  /// JSON pointer of `key` inside this object, for error messages.
  std::string path_of(const std::string& key) const { return path_ + "/" + key; }
  const std::string& path() const { return path_; }
  /// Throws ConfigError naming the first key that was never read.
  void finish() const;

 private:
  template <class T>
  T convert(const std::string& key) const {
    try {
      return j_.at(key).get<T>();
    } catch (const json::exception&) {
      throw ConfigError(path_of(key), "has the wrong type (value " + j_.at(key).dump() + ")");
    }
  }
  json j_;
  std::string path_;
  std::set<std::string> used_;
};

/// Throws ConfigError(path, msg) unless `cond`.
void config_check(bool cond, const std::string& path, const std::string& msg);

/// Parses a JSON file; IoError if unreadable, ConfigError with line/column if malformed.
json load_json_file(const std::string& path);

/// Applies one override "a.b.c=value" to `config`. The value is parsed as JSON when it can be
/// (numbers, true/false, lists), otherwise taken as a string. Intermediate objects must exist.
void apply_override(json& config, const std::string& assignment);

/// Sets `config[a][b]... = value` for a dotted key, creating objects as needed.
void set_dotted(json& config, const std::string& dotted_key, const json& value);

/// Reads `config[a][b]...` for a dotted key; throws ConfigError if any part is missing.
const json& get_dotted(const json& config, const std::string& dotted_key);

/// Writes `text` to `path` atomically (temporary file in the same folder, then rename).
void write_text_atomic(const std::string& path, const std::string& text);

}  // namespace lopt
