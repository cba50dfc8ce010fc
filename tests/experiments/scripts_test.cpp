// Tests of the analysis scripts in experiments/ (run with /usr/bin/python3) over real sweeps of a
// tiny config: each checks the script's figures against the runs' own files read back in C++.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/config.h"
#include "experiments/h5_writer.h"
#include "experiments/sweep.h"
#include "support.h"

using lopt::json;

// experiments/diagnostics_table.py over a sweep with diagnostics: plain SGD's row has cosine 1 with
// the gradient, Adam's and Muon's do not; with --spectra only Muon has a pre-orthogonalisation
// direction, of lower stable rank than its step; a sweep without diagnostics is refused naming the
// file and the key.
TEST(Sweep, DiagnosticsTableSummarisesEachRunsTensorsOfARole) {
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 100, 20);
  auto base = lopt_test::tiny_train_config(dir.path("fm"), "");
  base["steps"] = 40;
  base["eval_every"] = 10;
  base["diagnostics"] = true;
  json sweep = {{"base", base},
                {"grid", {{"task.width", {16, 32}},
                          {"@name,optimizer", json::array({json::array({"SGD", {{"type", "sgd"}, {"lr", 0.05}}}),
                                                           json::array({"Adam", {{"type", "adam"}, {"lr", 1e-3}}}),
                                                           json::array({"Muon", {{"type", "muon"}, {"lr", 0.02}}})})}}},
                {"output_dir", dir.path("sw")}};
  lopt::run_sweep(sweep, lopt::ProgressMode::quiet);
  const std::string script = "/usr/bin/python3 " + (lopt_test::repo_root() / "experiments/diagnostics_table.py").string();
  ASSERT_EQ(lopt_test::run_shell(script + " " + dir.path("sw.h5") + " --steps 10-40 --spectra > " + dir.path("t.md") +
                                  " 2>&1"), 0)
      << lopt_test::read_text(dir.path("t.md"));
  const std::string table = lopt_test::read_text(dir.path("t.md"));
  EXPECT_NE(table.find("RMS of hidden_weight"), std::string::npos) << table;
  const auto spectra = table.find("stable rank: gradient");
  ASSERT_NE(spectra, std::string::npos) << table;
  // Cells: "", group, x, the figures...
  auto cells = [&](const std::string& row, size_t from) { return lopt_test::markdown_cells(table, row, from); };
  for (const char* opt : {"SGD", "Adam", "Muon"})
    for (const char* width : {"16", "32"}) {
      const std::string row = std::string("| ") + opt + " | " + width + " |", name = opt;
      // The first table's fourth cell is the mean cosine with the gradient: 1 for plain SGD only.
      const auto first = cells(row, 0);
      ASSERT_GE(first.size(), 5u) << row;
      EXPECT_EQ(first[4] == " 1.000 ", name == "SGD") << row << first[4];
      // The second: the direction before Newton–Schulz exists for Muon only; SGD's step has its
      // gradient's stable rank, Muon's a larger one than its direction's.
      const auto second = cells(row, spectra);
      ASSERT_EQ(second.size(), 8u) << row;
      EXPECT_EQ(second[3] == " - ", name != "Muon") << row << second[3];
      if (name == "SGD") {
        EXPECT_EQ(second[5], second[7]) << row;
      }
      if (name == "Muon") {
        EXPECT_GT(std::stod(second[7]), std::stod(second[6])) << row;
      }
    }
  base.erase("diagnostics");
  json plain = {{"base", base}, {"grid", {{"task.width", {16}}}}, {"output_dir", dir.path("plain")}};
  lopt::run_sweep(plain, lopt::ProgressMode::quiet);
  EXPECT_NE(lopt_test::run_shell(script + " " + dir.path("plain.h5") + " --group task.width > " + dir.path("e.txt") + " 2>&1"), 0);
  EXPECT_NE(lopt_test::read_text(dir.path("e.txt")).find("\"diagnostics\": true"), std::string::npos)
      << lopt_test::read_text(dir.path("e.txt"));
}

// experiments/reparam_auc.py: per reparameterisation scale and name, the mean over seeds of the
// run's mean normalised training loss (clamped at 1.5 ln C, as meta-training normalises it), read
// back here from each run's own file; the last row is their mean over scales; --first N reads only
// the first N steps; a sweep without task.reparam_scale is refused naming the key.
TEST(Sweep, ReparamAucAveragesTheClampedTrainingLossOfEachRun) {
  if (lopt_test::run_shell("/usr/bin/python3 -c 'import h5py' > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3-h5py is not installed";
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 100, 20);
  auto base = lopt_test::tiny_train_config(dir.path("fm"), "");
  base["steps"] = 12;
  base["eval_every"] = 12;
  json sweep = {{"base", base},
                {"grid", {{"task.reparam_scale", {0.5, 4.0}},
                          {"@name,optimizer", json::array({json::array({"SGD", {{"type", "sgd"}, {"lr", 0.5}}}),
                                                           json::array({"Adam", {{"type", "adam"}, {"lr", 1e-2}}})})},
                          {"seed", {1, 2}}}},
                {"output_dir", dir.path("sw")}};
  const auto rows = lopt::run_sweep(sweep, lopt::ProgressMode::quiet);
  ASSERT_EQ(rows.size(), 8u);
  const auto runs = json::parse(lopt::h5_read_string_attr(dir.path("sw.h5"), "runs"));
  ASSERT_EQ(runs.size(), 8u);
  // Two classes: the cap 1.5 ln 2 ≈ 1.04 sits below the fake data's initial loss, so clamping matters.
  const double cap = 1.5 * std::log(2.0);
  auto expected = [&](const std::string& name, double s, int first) {
    double sum = 0;
    int n = 0;
    for (const auto& r : runs) {
      if (r["point"]["@name"] != name || r["point"]["task.reparam_scale"].get<double>() != s) continue;
      auto loss = lopt::h5_read_doubles(r["file"].get<std::string>(), "train/loss");
      if (first > 0) loss.resize(static_cast<size_t>(first));
      double m = 0;
      for (double l : loss) m += std::clamp(std::isfinite(l) ? l : cap, 0.0, cap);
      sum += m / static_cast<double>(loss.size());
      ++n;
    }
    EXPECT_EQ(n, 2) << name << " " << s;
    return sum / n;
  };
  const std::string script = "/usr/bin/python3 " + (lopt_test::repo_root() / "experiments/reparam_auc.py").string() + " " +
                             dir.path("sw.h5") + " --classes 2";
  for (int first : {0, 3}) {
    const std::string out = dir.path("t" + std::to_string(first) + ".md");
    ASSERT_EQ(lopt_test::run_shell(script + (first ? " --first 3" : "") + " > " + out + " 2>&1"), 0)
        << lopt_test::read_text(out);
    const std::string table = lopt_test::read_text(out);
    ASSERT_NE(table.find("| s | Adam | SGD |"), std::string::npos) << table;
    // The figures of the row headed `head` (its cells after "" and the head itself).
    auto row = [&](const std::string& head) {
      std::vector<double> v;
      const auto c = lopt_test::markdown_cells(table, "| " + head + " |");
      for (size_t i = 2; i < c.size(); ++i)
        if (c[i].find_first_not_of(' ') != std::string::npos) v.push_back(std::stod(c[i]));
      return v;
    };
    const auto lo = row("0.5"), hi = row("4"), mean = row("mean over s");
    ASSERT_EQ(lo.size(), 2u);
    ASSERT_EQ(hi.size(), 2u);
    ASSERT_EQ(mean.size(), 2u);
    EXPECT_NEAR(lo[0], expected("Adam", 0.5, first), 6e-5);
    EXPECT_NEAR(lo[1], expected("SGD", 0.5, first), 6e-5);
    EXPECT_NEAR(hi[0], expected("Adam", 4.0, first), 6e-5);
    EXPECT_NEAR(hi[1], expected("SGD", 4.0, first), 6e-5);
    EXPECT_NEAR(mean[1], (expected("SGD", 0.5, first) + expected("SGD", 4.0, first)) / 2, 1e-4);
    EXPECT_LE(hi[1], cap + 1e-4);
  }
  json plain = {{"base", base}, {"grid", {{"task.width", {16}}}}, {"output_dir", dir.path("plain")}};
  lopt::run_sweep(plain, lopt::ProgressMode::quiet);
  ASSERT_NE(lopt_test::run_shell("/usr/bin/python3 " + (lopt_test::repo_root() / "experiments/reparam_auc.py").string() +
                                 " " + dir.path("plain.h5") + " > " + dir.path("e.txt") + " 2>&1"),
            0);
  EXPECT_NE(lopt_test::read_text(dir.path("e.txt")).find("task.reparam_scale"), std::string::npos)
      << lopt_test::read_text(dir.path("e.txt"));
}
