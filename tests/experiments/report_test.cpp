// experiments/report.py: the static HTML report of a comparison renders in a real browser (Debian's
// chromium, headless) without console errors and with its key elements; a file that is not a lopt
// result is a usage error naming it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/config.h"
#include "support.h"

namespace {

namespace fs = std::filesystem;

using lopt_test::repo_root;

std::string slurp(const fs::path& p) { return lopt_test::read_text(p.string()); }

int run(const std::string& cmd) { return lopt_test::run_shell(cmd); }

}  // namespace

TEST(Report, AComparisonRendersInChromiumWithItsTablesAndNoConsoleErrors) {
  if (run("command -v chromium > /dev/null 2>&1") != 0) GTEST_SKIP() << "chromium is not installed (scripts/setup.sh installs it)";
  lopt_test::TempDir dir;
  const std::string cd = "cd " + repo_root().string() + " && ";
  ASSERT_EQ(run(cd + "/usr/bin/python3 experiments/report.py results/eval_mulo_s.h5 -o " + dir.path("report") + " > " +
                dir.path("report.log") + " 2>&1"),
            0)
      << slurp(dir.path("report.log"));
  const std::string page = dir.path("report/eval_mulo_s/index.html");
  ASSERT_TRUE(fs::exists(page));
  // Headless chromium: the rendered DOM on stdout, console messages on stderr (--enable-logging).
  const std::string chrome = "timeout 120 chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars "
                             "--user-data-dir=" + dir.path("profile") + " --enable-logging=stderr --v=0 ";
  ASSERT_EQ(run(chrome + "--dump-dom file://" + page + " > " + dir.path("dom.html") + " 2> " + dir.path("console.log")), 0)
      << slurp(dir.path("console.log"));
  ASSERT_EQ(run(chrome + "--window-size=1200,1800 --screenshot=" + dir.path("shot.png") + " file://" + page + " > /dev/null 2>&1"), 0);
  EXPECT_GT(fs::file_size(dir.path("shot.png")), 20000u) << "the screenshot is (nearly) empty";
  const std::string dom = slurp(dir.path("dom.html")), console = slurp(dir.path("console.log"));
  std::istringstream lines(console);
  for (std::string l; std::getline(lines, l);)
    if (l.find("CONSOLE") != std::string::npos || l.find("ERR_FILE_NOT_FOUND") != std::string::npos)
      ADD_FAILURE() << "browser console: " << l;
  for (const char* key : {"Results on the report seeds", "Tuning grids", "class=\"chosen\"", "id=\"figure\"", "muLO_S_tuned",
                          "SIMD target: AVX", "resolved config of eval_mulo_s.h5"})
    EXPECT_NE(dom.find(key), std::string::npos) << "the rendered page lacks " << key;
  EXPECT_TRUE(fs::exists(dir.path("report/eval_mulo_s/figure.png")));
  // The check sees a broken page: without its figure the console reports the failed load.
  fs::remove(dir.path("report/eval_mulo_s/figure.png"));
  ASSERT_EQ(run(chrome + "--dump-dom file://" + page + " > /dev/null 2> " + dir.path("console2.log")), 0);
  EXPECT_NE(slurp(dir.path("console2.log")).find("image failed to load"), std::string::npos);
  EXPECT_NE(slurp(dir.path("report/index.html")).find("eval_mulo_s/index.html"), std::string::npos);
}

TEST(Report, AFileThatIsNotALoptResultIsAUsageError) {
  lopt_test::TempDir dir;
  lopt::write_text_atomic(dir.path("x.h5"), "not hdf5");
  const std::string cmd = "/usr/bin/python3 " + (repo_root() / "experiments/report.py").string() + " " + dir.path("x.h5") +
                          " -o " + dir.path("r") + " > " + dir.path("out.txt") + " 2>&1";
  EXPECT_EQ(run(cmd), 2);
  const std::string out = slurp(dir.path("out.txt"));
  EXPECT_NE(out.find(dir.path("x.h5")), std::string::npos) << out;
  EXPECT_NE(out.find("not an HDF5 file"), std::string::npos) << out;
}
