// Progress lines for logs: one per decile, and one whenever line_interval_s has passed since the
// last (a meta-training of hours shows its rate every few minutes, not once an hour).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>

#include "common/progress.h"

namespace {

int64_t lines_of(const std::string& s) { return std::count(s.begin(), s.end(), '\n'); }

TEST(Progress, LinesEveryDecileAndWheneverTheIntervalHasPassed) {
  // Never due by time: the first update and each new decile, 0% .. 100%, and nothing at finish.
  testing::internal::CaptureStderr();
  {
    lopt::Progress p(1000, "run", lopt::ProgressMode::lines, 0, 1e9);
    for (int64_t i = 1; i <= 1000; ++i) p.update(i);
    p.finish();
  }
  auto out = testing::internal::GetCapturedStderr();
  EXPECT_EQ(lines_of(out), 11) << out;
  EXPECT_NE(out.find("run: 1000/1000 (100%)"), std::string::npos) << out;

  // Always due: a line per update within one decile.
  testing::internal::CaptureStderr();
  {
    lopt::Progress p(1000, "run", lopt::ProgressMode::lines, 0, 0.0);
    for (int64_t i = 1; i <= 50; ++i) p.update(i);
  }
  EXPECT_EQ(lines_of(testing::internal::GetCapturedStderr()), 50);

  // A resumed run at 35%: its first line, then one after the interval within the same decile.
  testing::internal::CaptureStderr();
  {
    lopt::Progress p(1000, "run", lopt::ProgressMode::lines, 350, 0.05);
    p.update(351);
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    p.update(352);
  }
  out = testing::internal::GetCapturedStderr();
  EXPECT_EQ(lines_of(out), 2) << out;
  EXPECT_NE(out.find("run: 352/1000 (35%)"), std::string::npos) << out;

  // Quiet prints nothing, due or not.
  testing::internal::CaptureStderr();
  {
    lopt::Progress p(10, "run", lopt::ProgressMode::quiet, 0, 0.0);
    for (int64_t i = 1; i <= 10; ++i) p.update(i);
    p.finish();
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

}  // namespace
