#include "common/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace lopt {

std::string format_duration(double s) {
  char buf[64];
  if (!std::isfinite(s) || s < 0) return "?";
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s / 3600), static_cast<int>(std::fmod(s, 3600) / 60));
  } else if (s >= 60) {
    std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s / 60), static_cast<int>(std::fmod(s, 60)));
  } else {
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  }
  return buf;
}

Progress::Progress(int64_t total, std::string label, ProgressMode mode, int64_t already_done, double line_interval_s)
    : total_(total < 1 ? 1 : total),
      already_done_(already_done),
      label_(std::move(label)),
      mode_(mode),
      line_interval_s_(line_interval_s) {
  if (mode_ == ProgressMode::automatic) mode_ = isatty(STDERR_FILENO) ? ProgressMode::bar : ProgressMode::lines;
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(int64_t done, const std::string& status) {
  if (mode_ == ProgressMode::quiet) return;
  auto now = std::chrono::steady_clock::now();
  if (mode_ == ProgressMode::bar) {
    if (std::chrono::duration<double>(now - last_draw_).count() < 0.1 && done < total_) return;
    last_draw_ = now;
    draw(done, status, false);
  } else {
    const int64_t decile = done * 10 / total_;
    const bool due = std::chrono::duration<double>(now - last_draw_).count() >= line_interval_s_;
    if (decile == last_line_decile_ && !due) return;
    last_line_decile_ = decile;
    last_draw_ = now;
    draw(done, status, false);
  }
}

void Progress::finish(const std::string& status) {
  if (finished_ || mode_ == ProgressMode::quiet) return;
  finished_ = true;
  if (mode_ == ProgressMode::lines && last_line_decile_ == 10) return;  // 100% line already printed
  draw(total_, status, true);
}

void Progress::draw(int64_t done, const std::string& status, bool final_line) {
  double el = elapsed_seconds();
  double frac = static_cast<double>(done) / static_cast<double>(total_);
  // Rate and ETA count only this session's work (a resumed run starts at already_done_).
  const double fresh = static_cast<double>(std::max<int64_t>(0, done - already_done_));
  double rate = el > 0 ? fresh / el : 0.0;
  double eta = fresh > 0 ? static_cast<double>(total_ - done) / rate : NAN;
  if (mode_ == ProgressMode::bar) {
    const int width = 30;
    int filled = static_cast<int>(frac * width);
    std::string bar(filled, '#');
    bar += std::string(width - filled, '-');
    std::fprintf(stderr, "\r%s [%s] %3d%% %lld/%lld %.1f it/s %s %s %s\033[K", label_.c_str(), bar.c_str(),
                 static_cast<int>(frac * 100), static_cast<long long>(done), static_cast<long long>(total_), rate,
                 final_line ? "took" : "ETA", format_duration(final_line ? el : eta).c_str(), status.c_str());
    if (final_line) std::fputc('\n', stderr);
  } else {
    std::fprintf(stderr, "%s: %lld/%lld (%d%%) %.1f it/s elapsed %s ETA %s %s\n", label_.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total_), static_cast<int>(frac * 100), rate,
                 format_duration(el).c_str(), format_duration(final_line ? 0.0 : eta).c_str(), status.c_str());
  }
  std::fflush(stderr);
}

}  // namespace lopt
