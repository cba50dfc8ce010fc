#pragma once
/// Progress display for long loops: a bar with rate and ETA on a terminal, a plain line
/// every ~10% and at least every `line_interval_s` seconds otherwise (logs, CI: a meta-training
/// of many hours still shows its rate every few minutes), nothing when quiet.
#include <chrono>
#include <cstdint>
#include <string>

namespace lopt {

enum class ProgressMode { automatic, bar, lines, quiet };

class Progress {
 public:
  /// `total` iterations labelled `label`; automatic picks bar when stderr is a terminal.
  /// `already_done` iterations were done before (a resumed run): rate and ETA exclude them.
  Progress(int64_t total, std::string label, ProgressMode mode = ProgressMode::automatic, int64_t already_done = 0,
           double line_interval_s = 300.0);
  /// Records that `done` iterations are complete; `status` is shown after the bar (e.g. "loss 0.41").
  void update(int64_t done, const std::string& status = "");
  /// Prints the final state and a newline.
  void finish(const std::string& status = "");
  double elapsed_seconds() const;

 private:
  void draw(int64_t done, const std::string& status, bool final_line);
  int64_t total_, already_done_;
  std::string label_;
  ProgressMode mode_;
  double line_interval_s_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  int64_t last_line_decile_ = -1;
  bool finished_ = false;
};

/// Formats seconds as "1h02m", "3m05s" or "12.3s".
std::string format_duration(double seconds);

}  // namespace lopt
