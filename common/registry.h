#pragma once
/// A table of named types: tasks, task families, optimizers, learned optimizers, estimators. Each
/// layer keeps one (a function-local static) and registers its builtins from one file on first use;
/// code outside the layer adds types with add(). Unknown names give a ConfigError that lists the
/// registered ones, so "valid:" lists and --help text are generated, never kept by hand.
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "common/errors.h"

namespace lopt {

template <class Entry>
class NamedRegistry {
 public:
  /// `what` names the kind in errors ("optimizer", "task type"); `builtins` registers the builtin
  /// types (it may call add(); it runs once, before the first lookup).
  NamedRegistry(std::string what, std::function<void()> builtins) : what_(std::move(what)), builtins_(std::move(builtins)) {}

  /// Registers (or replaces) `name`.
  void add(const std::string& name, Entry e) {
    std::lock_guard<std::mutex> lock(mu_);
    entries_[name] = std::move(e);
  }
  bool contains(const std::string& name) {
    ensure_builtins();
    std::lock_guard<std::mutex> lock(mu_);
    return entries_.count(name) > 0;
  }
  /// The entry of `name` (a copy: entries are small function tables); ConfigError at `path` naming
  /// the registered types when there is none.
  Entry get(const std::string& name, const std::string& path) {
    ensure_builtins();
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) throw ConfigError(path, "unknown " + what_ + " \"" + name + "\" (valid: " + join_locked() + ")");
    return it->second;
  }
  /// Registered names, sorted.
  std::vector<std::string> names() {
    ensure_builtins();
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> out;
    for (const auto& [k, v] : entries_) out.push_back(k);
    return out;
  }
  /// "a, b, c": the registered names for an error message or help text.
  std::string joined() {
    ensure_builtins();
    std::lock_guard<std::mutex> lock(mu_);
    return join_locked();
  }

 private:
  void ensure_builtins() { std::call_once(once_, builtins_); }
  std::string join_locked() const {
    std::string s;
    for (const auto& [k, v] : entries_) s += (s.empty() ? "" : ", ") + k;
    return s;
  }

  std::string what_;
  std::function<void()> builtins_;
  std::once_flag once_;
  std::mutex mu_;
  std::map<std::string, Entry> entries_;
};

/// "a, b, c" from a list of names.
inline std::string join_names(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

}  // namespace lopt
