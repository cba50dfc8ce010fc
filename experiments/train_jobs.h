#pragma once
/// Independent training runs side by side: `lopt compare --jobs N` and `lopt sweep --jobs N` train up
/// to N runs at a time, each in a child process (`lopt train`) with its own intra-op threads. Small
/// tasks use a second core poorly inside one run (every op pays its threading overhead), so two
/// one-thread runs at once finish a comparison sooner than one two-thread run after another. A child
/// runs exactly the resolved config the parent would have run itself, so its file is the same and is
/// reused the same way; with `jobs` <= 1 the runs stay in this process, one after another.
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace lopt {

struct TrainJobs {
  int jobs = 1;                ///< runs at a time; <= 1: in this process, one after another
  int threads_per_job = 1;     ///< each child's --threads
  std::string executable;      ///< the lopt binary whose `train` command the children run
  bool parallel() const { return jobs > 1; }
};

/// The running binary, for TrainJobs::executable: "/proc/self/exe", which a child started through it
/// resolves to its parent's binary even after the file the parent started from was replaced.
std::string current_executable();

/// One run for train_runs: its resolved train config (with "output") and what to call it in messages.
struct PendingRun {
  nlohmann::json config;
  std::string what;
};

/// Trains every run; a run whose loss diverged has its file written and is reported on stderr as
/// `who`: "<message> (recorded as diverged, scores +inf)". In child processes (jobs.parallel()):
/// each child's config goes to <output>.config.json and its output to <output>.log, both removed
/// when it succeeds or diverges; a child that fails otherwise stops the others and throws Error
/// naming the run, its exit status, its log and the log's last line. A signal to this process
/// (Ctrl-C, SIGTERM) is passed on to the children, then Interrupted is thrown: finished runs are kept.
void train_runs(const std::vector<PendingRun>& runs, const TrainJobs& jobs, const std::string& who,
                const std::function<void(const nlohmann::json&)>& train_here);

}  // namespace lopt
