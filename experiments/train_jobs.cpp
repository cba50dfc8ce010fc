#include "experiments/train_jobs.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/config.h"
#include "common/errors.h"
#include "common/signals.h"
#include "experiments/train.h"

extern char** environ;

namespace lopt {

std::string current_executable() {
  // Not the file /proc/self/exe points at but the link itself: a child spawned through it runs the
  // very binary of this process even when a rebuild has replaced or removed that file meanwhile, so a
  // long comparison's children neither fail to start nor run other code than their parent.
  std::error_code ec;
  std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("cannot find the running lopt binary (/proc/self/exe: " + ec.message() + "); run without --jobs");
  return "/proc/self/exe";
}

namespace {

struct Child {
  pid_t pid = -1;
  const PendingRun* run = nullptr;
  std::string config_path, log_path;
};

std::string last_line(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t\r") != std::string::npos) last = line;
  if (auto cr = last.rfind('\r'); cr != std::string::npos) last = last.substr(cr + 1);  // progress redraws
  return last;
}

Child start(const PendingRun& run, const TrainJobs& jobs) {
  Child c;
  c.run = &run;
  const std::string out = run.config.at("output");
  c.config_path = out + ".config.json";
  c.log_path = out + ".log";
  if (const auto dir = std::filesystem::path(out).parent_path(); !dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);  // as run_train does; a failure shows at the write below
  }
  write_text_atomic(c.config_path, run.config.dump(2) + "\n");
  const std::string threads = std::to_string(jobs.threads_per_job);
  std::vector<std::string> args = {jobs.executable, "train", "--config", c.config_path, "--threads", threads, "-q", "--overwrite"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, c.log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
  const int rc = posix_spawn(&c.pid, jobs.executable.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw Error("cannot start " + jobs.executable + " train for " + run.what + ": " + std::strerror(rc));
  return c;
}

/// Removes a child's config and log (once it finished, diverged or was stopped).
void remove_files(const Child& c) {
  std::error_code ec;
  std::filesystem::remove(c.config_path, ec);
  std::filesystem::remove(c.log_path, ec);
}

/// Sends `sig` to every running child, waits for them and removes their config and log (a stopped
/// run leaves no file; rerunning the command starts it again).
void stop_all(std::vector<Child>& running, int sig) {
  for (auto& c : running) kill(c.pid, sig);
  for (auto& c : running) {
    int st = 0;
    while (waitpid(c.pid, &st, 0) < 0 && errno == EINTR) {
    }
    remove_files(c);
  }
  running.clear();
}

}  // namespace

void train_runs(const std::vector<PendingRun>& runs, const TrainJobs& jobs, const std::string& who,
                const std::function<void(const nlohmann::json&)>& train_here) {
  if (!jobs.parallel()) {  // (a batch of one runs in a child too: every run gets the children's thread count)
    for (const auto& r : runs) {
      std::fprintf(stderr, "%s: %s\n", who.c_str(), r.what.c_str());
      try {
        train_here(r.config);
      } catch (const DivergenceError& e) {
        std::fprintf(stderr, "%s: %s (recorded as diverged, scores +inf)\n", who.c_str(), e.what());
      }
    }
    return;
  }
  std::deque<const PendingRun*> todo;
  for (const auto& r : runs) todo.push_back(&r);
  std::vector<Child> running;
  while (!todo.empty() || !running.empty()) {
    if (const int sig = interrupted()) {
      stop_all(running, sig);
      throw_if_interrupted(who, "finished runs are kept: run the same command again to continue");
    }
    while (!todo.empty() && static_cast<int>(running.size()) < jobs.jobs) {
      std::fprintf(stderr, "%s: %s (child process)\n", who.c_str(), todo.front()->what.c_str());
      try {
        running.push_back(start(*todo.front(), jobs));
      } catch (...) {
        stop_all(running, SIGTERM);  // no child outlives the command
        throw;
      }
      todo.pop_front();
    }
    bool reaped = false;
    for (size_t i = 0; i < running.size(); ++i) {
      int st = 0;
      const pid_t r = waitpid(running[i].pid, &st, WNOHANG);
      if (r == 0 || (r < 0 && errno == EINTR)) continue;
      Child c = running[i];
      running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
      reaped = true;
      const bool ok = r > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
      const std::string out = c.run->config.at("output");
      // A diverged run exits with an error after writing its file (status "diverged").
      const bool diverged = !ok && finished_run_matches(out, c.run->config);
      if (ok || diverged) {
        if (diverged)
          std::fprintf(stderr, "%s: %s: %s (recorded as diverged, scores +inf)\n", who.c_str(), c.run->what.c_str(),
                       last_line(c.log_path).c_str());
        remove_files(c);
        break;
      }
      if (interrupted()) break;  // the child stopped for the same signal: handled at the loop's top
      const std::string status = r < 0 ? std::string("lost")
                                 : WIFEXITED(st) ? "exit status " + std::to_string(WEXITSTATUS(st))
                                 : WIFSIGNALED(st) ? "killed by signal " + std::to_string(WTERMSIG(st))
                                                   : "stopped";
      stop_all(running, SIGTERM);
      throw Error(who + ": the run " + c.run->what + " failed (" + status + "): " + last_line(c.log_path) +
                  " (its output: " + c.log_path + "; its config: " + c.config_path + ")");
    }
    if (!reaped) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace lopt
