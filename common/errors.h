#pragma once
/// Error types thrown by the library. Only `main` turns them into exit codes:
/// ConfigError / UsageError -> 2, everything else -> 1.
#include <cstdint>
#include <stdexcept>
#include <string>

namespace lopt {

/// Base of every error lopt throws on purpose.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

/// A configuration value is wrong. `path` is the JSON pointer of the key, e.g. "/task/width".
class ConfigError : public Error {
 public:
  ConfigError(const std::string& path, const std::string& msg)
      : Error("config error at '" + (path.empty() ? std::string("/") : path) + "': " + msg), path_(path), message_(msg) {}
  const std::string& path() const { return path_; }
  /// The message without the "config error at '<path>'" prefix (to rethrow it at another path).
  const std::string& message() const { return message_; }

 private:
  std::string path_, message_;
};

/// The command line is wrong (unknown flag, missing argument).
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& msg) : Error("usage error: " + msg) {}
};

/// A file could not be read or written. The message names the path, what was expected and a hint.
class IoError : public Error {
 public:
  IoError(const std::string& path, const std::string& what, const std::string& hint = "")
      : Error(path + ": " + what + (hint.empty() ? std::string() : " (" + hint + ")")), path_(path) {}
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

/// A computation went non-finite in a way that cannot be skipped (e.g. meta-training's theta).
class NumericalError : public Error {
 public:
  explicit NumericalError(const std::string& msg) : Error(msg) {}
};

/// Training produced a non-finite loss at `step`.
class DivergenceError : public Error {
 public:
  DivergenceError(int64_t step, double loss)
      : Error("training diverged: loss is " + std::to_string(loss) + " at step " + std::to_string(step)),
        step_(step) {}
  int64_t step() const { return step_; }

 private:
  int64_t step_;
};

}  // namespace lopt
