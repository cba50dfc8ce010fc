// experiments/reproduce.py: a committed number is held to its exact tolerance only when the
// regenerated file comes from the same platform (SIMD target and CPU); another CPU, or a file that
// does not record one, gets the number's if_platform_differs tolerance, and the table says why.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/config.h"
#include "experiments/h5_writer.h"
#include "support.h"

namespace {

namespace fs = std::filesystem;

using lopt_test::repo_root;

int run(const std::string& cmd) { return lopt_test::run_shell(cmd); }

void write_result(const std::string& path, double value, const std::string& machine) {
  lopt::H5Writer w(path);
  w.attr("final_test_accuracy", value);
  w.attr("simd_target", std::string("AVX3"));
  if (!machine.empty()) w.attr("machine", machine);
  w.commit();
}

}  // namespace

TEST(Reproduce, AnotherCpuOrAnUnrecordedOneGetsThePlatformTolerance) {
  lopt_test::TempDir dir;
  fs::create_directories(dir.path("out/e"));
  const std::string here = "AMD EPYC (AuthenticAMD family 25 model 17 stepping 1)";
  const auto manifest = [&](const std::string& fallback) {
    lopt::write_text_atomic(dir.path("m.json"),
                            R"({"entries": [{"name": "e", "what": "w", "commands": [], "expected_wall_s": 1, "numbers": [
                               {"name": "acc", "committed": ")" + dir.path("c.h5") + R"(:final_test_accuracy",
                                "regenerated": "{out}/r.h5:final_test_accuracy", "abs_tol": 0, "why": "same platform",
                                "if_platform_differs": )" + fallback + "}]}]}");
  };
  const std::string cmd = "/usr/bin/python3 " + (repo_root() / "experiments/reproduce.py").string() + " --manifest " +
                          dir.path("m.json") + " --out " + dir.path("out") + " --compare-only e > " + dir.path("log") + " 2>&1";
  const auto log = [&] { return lopt_test::read_text(dir.path("log")); };
  manifest(R"({"abs_tol": 0.01, "why": "other platform"})");

  // Same target and CPU (thread counts may differ: they are not the platform): exact.
  write_result(dir.path("c.h5"), 0.8872, here + ", 2 cores, 2 threads");
  write_result(dir.path("out/e/r.h5"), 0.8872, here + ", 16 cores, 2 threads");
  EXPECT_EQ(run(cmd), 0) << log();
  write_result(dir.path("out/e/r.h5"), 0.8854, here + ", 2 cores, 2 threads");
  EXPECT_EQ(run(cmd), 1) << log();
  EXPECT_NE(log().find("| abs 0 | NO"), std::string::npos) << log();

  // Another CPU model behind the same shortened name: the platform tolerance, and the row says why.
  write_result(dir.path("out/e/r.h5"), 0.8854, "AMD EPYC (AuthenticAMD family 25 model 1 stepping 1), 2 cores, 2 threads");
  EXPECT_EQ(run(cmd), 0) << log();
  EXPECT_NE(log().find("abs 0.01 (CPU AMD EPYC (AuthenticAMD family 25 model 1 stepping 1), committed on " + here + ")"),
            std::string::npos)
      << log();
  write_result(dir.path("out/e/r.h5"), 0.8700, "AMD EPYC (AuthenticAMD family 25 model 1 stepping 1), 2 cores, 2 threads");
  EXPECT_EQ(run(cmd), 1) << log();

  // A committed file written before lopt recorded its machine: bit-identity cannot be expected.
  write_result(dir.path("c.h5"), 0.8872, "");
  write_result(dir.path("out/e/r.h5"), 0.8854, here + ", 2 cores, 2 threads");
  EXPECT_EQ(run(cmd), 0) << log();
  EXPECT_NE(log().find("the committed file does not record its CPU"), std::string::npos) << log();

  // A fallback without a tolerance is a usage error naming the entry and the key.
  manifest(R"({"why": "no tolerance"})");
  EXPECT_EQ(run(cmd), 2) << log();
  EXPECT_NE(log().find("e numbers[0].if_platform_differs needs exactly one of abs_tol, rel_tol"), std::string::npos) << log();
}

TEST(Reproduce, TheMachineDescriptionNamesTheCpuModelNumbers) {
  const std::string m = lopt::machine_description();
  EXPECT_NE(m.find(" cores, "), std::string::npos) << m;
  const std::string cpuinfo = lopt_test::read_text("/proc/cpuinfo");
  if (cpuinfo.find("cpu family") != std::string::npos && cpuinfo.find("vendor_id") != std::string::npos)
    EXPECT_NE(m.find(" family "), std::string::npos) << m;  // x86: the model name alone may be shortened
}
