#pragma once
/// JSON configuration helpers: typed reads that track the JSON path of every key, reject
/// unknown keys, and load files / apply command-line overrides with actionable errors.
#include <nlohmann/json.hpp>

#include <limits>
#include <set>
#include <type_traits>
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

  /// Value of `key`, or `fallback` when absent. Throws ConfigError on a type mismatch, including a
  /// fractional number for an integer (32.7), a negative one for an unsigned (-1) and null for a
  /// number, string or bool ("lr": null is an error, not the default).
  template <class T>
  T get(const std::string& key, const T& fallback) {
    used_.insert(key);
    if (!j_.contains(key)) return fallback;
    if (j_.at(key).is_null()) {
      if constexpr (std::is_same_v<T, json>) return fallback;
      throw ConfigError(path_of(key), "is null; give a value or leave the key out for the default");
    }
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
  /// Whether `v` holds a T exactly (no silent truncation of 32.7 to 32 or wrap of -1 to 2^64 - 1).
  template <class T>
  static bool exact(const json& v) {
    if constexpr (std::is_same_v<T, bool>) {
      return v.is_boolean();
    } else if constexpr (std::is_integral_v<T>) {
      if (!v.is_number_integer()) return false;
      if (v.is_number_unsigned()) return v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max());
      const int64_t x = v.get<int64_t>();
      if constexpr (std::is_unsigned_v<T>) return x >= 0;
      else return x >= static_cast<int64_t>(std::numeric_limits<T>::min()) && x <= static_cast<int64_t>(std::numeric_limits<T>::max());
    } else if constexpr (std::is_floating_point_v<T>) {
      return v.is_number();
    } else if constexpr (std::is_same_v<T, std::string>) {
      return v.is_string();
    } else if constexpr (is_vector<T>::value) {
      if (!v.is_array()) return false;
      for (const auto& x : v)
        if (!exact<typename T::value_type>(x)) return false;
      return true;
    } else {
      return true;
    }
  }
  template <class T>
  struct is_vector : std::false_type {};
  template <class U, class A>
  struct is_vector<std::vector<U, A>> : std::true_type {};

  template <class T>
  T convert(const std::string& key) const {
    const json& v = j_.at(key);
    if (!exact<T>(v)) throw ConfigError(path_of(key), "has the wrong type or is out of range (value " + v.dump() + ")");
    try {
      return v.get<T>();
    } catch (const json::exception&) {
      throw ConfigError(path_of(key), "has the wrong type (value " + v.dump() + ")");
    }
  }
  json j_;
  std::string path_;
  std::set<std::string> used_;
};

/// Throws ConfigError(path, msg) unless `cond`.
void config_check(bool cond, const std::string& path, const std::string& msg);
/// ConfigError at `path` unless `v` is finite and >= 0 (learning rates, weight decays, epsilons).
void config_check_finite_nonneg(double v, const std::string& path);

/// Parses a JSON file; IoError if unreadable, ConfigError with line/column if malformed.
json load_json_file(const std::string& path);
/// Parses JSON text, rejecting duplicate keys and out-of-range numbers with a ConfigError naming `what`.
json parse_json_strict(const std::string& text, const std::string& what);

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
