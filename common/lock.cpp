#include "common/lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include "common/errors.h"

namespace lopt {

OutputLock::OutputLock(std::string lock_path, const std::string& what, bool shared)
    : path_(std::move(lock_path)), shared_(shared) {
  const std::filesystem::path p(path_);
  std::error_code ec;
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw IoError(path_, std::string("cannot create the lock file: ") + std::strerror(errno), "is the folder writable?");
  if (::flock(fd_, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    char buf[32] = {0};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    ::close(fd_);
    fd_ = -1;
    const std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("?");
    throw UsageError(what + " is being written by another lopt process (pid " + pid.substr(0, pid.find('\n')) +
                     "); wait for it to finish, or choose another output");
  }
  if (shared) return;  // several holders: no PID, and the file stays (an unlink would split the lock)
  const std::string me = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    // The lock holds without the PID; nothing else depends on it.
  }
}

OutputLock::~OutputLock() {
  if (fd_ >= 0) {
    if (!shared_) ::unlink(path_.c_str());
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
}

}  // namespace lopt
