#pragma once
/// Exclusive output locks: a run holds `<path>` (a lock file next to what it writes) for its whole
/// life, so a second lopt writing the same outputs fails at once naming the holder's PID. The lock
/// is an flock(2) on the file, released by the kernel if the process dies; the file is removed on
/// release.
#include <string>

namespace lopt {

class OutputLock {
 public:
  /// Takes the lock at `lock_path` for `what` (e.g. "meta-train output folder runs/meta/x"); throws
  /// UsageError naming the holder's PID when another process has it. A `shared` lock (e.g. each shard
  /// of a sweep on the folder) coexists with other shared ones and excludes an exclusive one.
  OutputLock(std::string lock_path, const std::string& what, bool shared = false);
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
  bool shared_ = false;
};

}  // namespace lopt
