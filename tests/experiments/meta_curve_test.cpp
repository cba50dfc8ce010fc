// experiments/meta_curve.py: the compare config of a meta-compute curve names only frozen snapshots, never the
// live theta.safetensors (compare reuses a finished run by its config, so a resumed meta-training overwriting
// theta would otherwise leave a stale point behind a path that now holds another theta); bad input: exit 2.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <tuple>
#include <vector>

#include "common/config.h"
#include "experiments/h5_writer.h"
#include "support.h"

namespace {

namespace fs = std::filesystem;

using lopt_test::repo_root;

int run(const std::string& cmd) { return lopt_test::run_shell(cmd); }

std::string slurp(const fs::path& p) { return lopt_test::read_text(p.string()); }

}  // namespace

TEST(MetaCurve, ConfigFreezesTheLatestThetaAndNamesOnlySnapshots) {
  if (run("/usr/bin/python3 -c 'import h5py' > /dev/null 2>&1") != 0) GTEST_SKIP() << "python3-h5py is not installed";
  lopt_test::TempDir dir;
  // A copy of a committed meta-training folder (its h5 log, latest theta and snapshots).
  const fs::path src = repo_root() / "results/checkpoints/celo2_recipe", meta = dir.path("meta");
  ASSERT_TRUE(fs::exists(src / "meta_train.h5")) << src;
  fs::create_directories(meta / "snapshots");
  fs::copy_file(src / "meta_train.h5", meta / "meta_train.h5");
  fs::copy_file(src / "theta.safetensors", meta / "theta.safetensors");
  int64_t first_snapshot = 0;
  for (const auto& e : fs::directory_iterator(src / "snapshots")) {
    const auto name = e.path().filename().string();
    if (name == "theta_step10.safetensors") first_snapshot = 10;
    if (name == "theta_step10.safetensors" || name == "theta_step30.safetensors") fs::copy_file(e.path(), meta / "snapshots" / name);
  }
  ASSERT_EQ(first_snapshot, 10) << "the committed run lost its first snapshot";
  const std::string script = "/usr/bin/python3 " + (repo_root() / "experiments/meta_curve.py").string();
  const std::string eval = (repo_root() / "experiments/configs/meta_curve_recipe_task.json").string();
  const std::string cmd = script + " config --meta " + meta.string() + " --eval " + eval + " -o " + dir.path("curve.json") +
                          " --runs " + dir.path("runs") + " > " + dir.path("log") + " 2>&1";
  ASSERT_EQ(run(cmd), 0) << slurp(dir.path("log"));

  // The latest theta was copied to snapshots/theta_step<outer steps done>, byte for byte.
  std::vector<fs::path> frozen;
  for (const auto& e : fs::directory_iterator(meta / "snapshots"))
    if (e.path().filename() != "theta_step10.safetensors" && e.path().filename() != "theta_step30.safetensors") frozen.push_back(e.path());
  ASSERT_EQ(frozen.size(), 1u) << "expected exactly one frozen snapshot";
  const std::string theta_bytes = slurp(meta / "theta.safetensors");
  EXPECT_EQ(slurp(frozen[0]), theta_bytes);
  const std::string stem = frozen[0].stem().string();  // theta_step<N>
  const std::string done = stem.substr(std::string("theta_step").size());

  const auto cfg = lopt::json::parse(slurp(dir.path("curve.json")));
  std::vector<std::string> names, paths;
  for (const auto& c : cfg["contenders"]) {
    names.push_back(c["name"].get<std::string>());
    if (c["optimizer"].contains("checkpoint")) paths.push_back(c["optimizer"]["checkpoint"].get<std::string>());
  }
  ASSERT_EQ(paths.size(), 4u) << "three snapshots as meta-trained, the latest tuned";
  for (const auto& p : paths) EXPECT_EQ(p.find("theta.safetensors"), std::string::npos) << "the live theta is named: " << p;
  EXPECT_EQ(paths[2], frozen[0].string());
  EXPECT_EQ(paths[3], frozen[0].string());
  EXPECT_EQ(names[0], "celo2@10");
  EXPECT_EQ(names[2], "celo2@" + done);
  EXPECT_EQ(names[3], "celo2@" + done + "_tuned");
  EXPECT_FALSE(cfg["contenders"][2].contains("lr_grid"));
  EXPECT_TRUE(cfg["contenders"][3].contains("lr_grid"));
  EXPECT_EQ(cfg["contenders"].size(), 6u) << "plus AdamW and Muon";

  // A resumed meta-training overwrites theta.safetensors: the frozen point keeps its bytes, and the config
  // written again names the same files (the run has not logged another step).
  { std::ofstream(meta / "theta.safetensors", std::ios::binary) << "another theta"; }
  ASSERT_EQ(run(cmd), 0) << slurp(dir.path("log"));
  EXPECT_EQ(slurp(frozen[0]), theta_bytes);
  EXPECT_EQ(lopt::json::parse(slurp(dir.path("curve.json"))), cfg);

  // --also: another meta-training's latest theta, frozen the same way, joins with its lr tuned; the same
  // learned-optimizer type twice is a name clash.
  const fs::path base_src = repo_root() / "results/checkpoints/celo2_base_recipe", other = dir.path("other");
  fs::create_directories(other);
  fs::copy_file(base_src / "meta_train.h5", other / "meta_train.h5");
  fs::copy_file(base_src / "theta.safetensors", other / "theta.safetensors");
  ASSERT_EQ(run(script + " config --meta " + meta.string() + " --also " + other.string() + " --min-step 30 --eval " + eval +
                " -o " + dir.path("also.json") + " > " + dir.path("log") + " 2>&1"),
            0)
      << slurp(dir.path("log"));
  const auto also = lopt::json::parse(slurp(dir.path("also.json")));
  ASSERT_EQ(also["contenders"].size(), 6u) << "celo2@30, the latest, the latest tuned, celo2_base tuned, AdamW, Muon";
  EXPECT_EQ(also["contenders"][0]["name"], "celo2@30") << "--min-step 30 leaves out the snapshot at 10";
  const auto& ob = also["contenders"][3];
  EXPECT_EQ(ob["name"].get<std::string>().rfind("celo2_base@", 0), 0u) << ob.dump();
  EXPECT_TRUE(ob.contains("lr_grid"));
  const std::string ob_path = ob["optimizer"]["checkpoint"].get<std::string>();
  EXPECT_EQ(ob_path.find((other / "snapshots" / "theta_step").string()), 0u) << ob_path;
  EXPECT_EQ(slurp(ob_path), slurp(other / "theta.safetensors"));
  EXPECT_EQ(run(script + " config --meta " + meta.string() + " --also " + meta.string() + " --eval " + eval + " -o " +
                dir.path("x.json") + " > " + dir.path("log4") + " 2>&1"),
            2);
  EXPECT_NE(slurp(dir.path("log4")).find("share a name"), std::string::npos) << slurp(dir.path("log4"));

  // --max-step: the curve ends at an existing snapshot (tuned there), nothing frozen; a step without a
  // snapshot is a usage error.
  { std::ofstream(meta / "theta.safetensors", std::ios::binary) << "yet another theta"; }
  ASSERT_EQ(run(script + " config --meta " + meta.string() + " --max-step 30 --eval " + eval + " -o " + dir.path("max.json") +
                " > " + dir.path("log") + " 2>&1"),
            0)
      << slurp(dir.path("log"));
  const auto upto = lopt::json::parse(slurp(dir.path("max.json")));
  ASSERT_EQ(upto["contenders"].size(), 5u);
  EXPECT_EQ(upto["contenders"][1]["name"], "celo2@30");
  EXPECT_EQ(upto["contenders"][2]["name"], "celo2@30_tuned");
  EXPECT_EQ(upto["contenders"][2]["optimizer"]["checkpoint"], (meta / "snapshots" / "theta_step30.safetensors").string());
  size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(meta / "snapshots")) ++files;
  EXPECT_EQ(files, 3u) << "--max-step froze the latest theta";
  EXPECT_EQ(run(script + " config --meta " + meta.string() + " --max-step 20 --eval " + eval + " -o " + dir.path("x.json") +
                " > " + dir.path("log5") + " 2>&1"),
            2);
  EXPECT_NE(slurp(dir.path("log5")).find("no snapshot at outer step 20"), std::string::npos) << slurp(dir.path("log5"));

  // --tune-at: an earlier snapshot tuned too (the tuned points form a second curve); a step the curve does
  // not hold is a usage error.
  ASSERT_EQ(run(script + " config --meta " + meta.string() + " --max-step 30 --tune-at 10 --eval " + eval + " -o " +
                dir.path("tuneat.json") + " > " + dir.path("log") + " 2>&1"),
            0)
      << slurp(dir.path("log"));
  const auto tuneat = lopt::json::parse(slurp(dir.path("tuneat.json")));
  ASSERT_EQ(tuneat["contenders"].size(), 6u) << tuneat.dump();
  EXPECT_EQ(tuneat["contenders"][2]["name"], "celo2@10_tuned");
  EXPECT_EQ(tuneat["contenders"][2]["optimizer"]["checkpoint"], (meta / "snapshots" / "theta_step10.safetensors").string());
  EXPECT_FALSE(tuneat["contenders"][2]["optimizer"].contains("lr")) << "the grid sets the lr";
  EXPECT_TRUE(tuneat["contenders"][2].contains("lr_grid"));
  EXPECT_EQ(tuneat["contenders"][3]["name"], "celo2@30_tuned");
  // With its summary written before the tuned points existed, config prints the `compare --only` command
  // that runs just those and keeps the other rows.
  {
    lopt::H5Writer w(dir.path("tuneat.h5"));
    w.attr("kind", std::string("compare"));
    w.attr("summary", std::string(R"([{"name": "celo2@10"}, {"name": "celo2@30"}, {"name": "AdamW"}, {"name": "Muon"}])"));
    w.commit();
  }
  ASSERT_EQ(run(script + " config --meta " + meta.string() + " --max-step 30 --tune-at 10 --eval " + eval + " -o " +
                dir.path("tuneat.json") + " > " + dir.path("log") + " 2>&1"),
            0)
      << slurp(dir.path("log"));
  EXPECT_NE(slurp(dir.path("log")).find("build/lopt compare --config " + dir.path("tuneat.json") +
                                         " --only celo2@10_tuned --only celo2@30_tuned --threads 1"),
            std::string::npos)
      << slurp(dir.path("log"));
  EXPECT_EQ(run(script + " config --meta " + meta.string() + " --max-step 30 --tune-at 20 --eval " + eval + " -o " +
                dir.path("x.json") + " > " + dir.path("log6") + " 2>&1"),
            2);
  EXPECT_NE(slurp(dir.path("log6")).find("--tune-at 20"), std::string::npos) << slurp(dir.path("log6"));

  // Bad input: a folder that is not a meta-training output, an evaluation file without its baselines.
  EXPECT_EQ(run(script + " config --meta " + dir.path("runs") + " --eval " + eval + " -o " + dir.path("x.json") + " > " +
                dir.path("log2") + " 2>&1"),
            2);
  EXPECT_NE(slurp(dir.path("log2")).find("no meta_train.h5"), std::string::npos) << slurp(dir.path("log2"));
  { std::ofstream(dir.path("bad.json")) << R"({"base": {}, "seeds": [1], "tuning_seeds": [2]})"; }
  EXPECT_EQ(run(script + " config --meta " + meta.string() + " --eval " + dir.path("bad.json") + " -o " + dir.path("x.json") +
                " > " + dir.path("log3") + " 2>&1"),
            2);
  EXPECT_NE(slurp(dir.path("log3")).find("missing key \"baselines\""), std::string::npos) << slurp(dir.path("log3"));
  EXPECT_FALSE(fs::exists(dir.path("x.json")));
}

// plot: snapshots of the run become the curve; every other contender is a reference line labelled by
// whether compare tuned it, and --lines keeps only the named ones.
TEST(MetaCurve, PlotLabelsAndFiltersTheReferenceLines) {
  if (run("/usr/bin/python3 -c 'import h5py' > /dev/null 2>&1") != 0) GTEST_SKIP() << "python3-h5py is not installed";
  lopt_test::TempDir dir;
  {
    lopt::H5Writer w(dir.path("s.h5"));
    w.attr("kind", std::string("compare"));
    const std::vector<std::tuple<std::string, double, int64_t>> rows = {
        {"celo2@10_tuned", 0.5, 28}, {"AdamW", 0.4, 28}, {"Muon", 0.3, 28}, {"muLO_M", 0.6, 0}};
    for (size_t i = 0; i < rows.size(); ++i) {
      const std::string g = "c" + std::to_string(i);
      w.group(g);
      w.attr("name", std::get<0>(rows[i]), g);
      w.attr("mean_final_train_loss", std::get<1>(rows[i]), g);
      w.attr("std_final_train_loss", 0.01, g);
      w.attr("tuning_runs", std::get<2>(rows[i]), g);
    }
    w.commit();
  }
  const std::string script = "/usr/bin/python3 " + (repo_root() / "experiments/meta_curve.py").string();
  const std::string meta = (repo_root() / "results/checkpoints/celo2_recipe").string();
  ASSERT_EQ(run(script + " plot --summary " + dir.path("s.h5") + " --meta " + meta + " > " + dir.path("all") + " 2>&1"), 0)
      << slurp(dir.path("all"));
  const std::string all = slurp(dir.path("all"));
  EXPECT_NE(all.find("| celo2@10_tuned | 10 |"), std::string::npos) << all;
  EXPECT_NE(all.find("| AdamW (tuned) |"), std::string::npos) << all;
  EXPECT_NE(all.find("| Muon (tuned) |"), std::string::npos) << all;
  EXPECT_NE(all.find("| muLO_M (as shipped) |"), std::string::npos) << all;
  ASSERT_EQ(run(script + " plot --summary " + dir.path("s.h5") + " --meta " + meta + " --lines AdamW --lines muLO_M -o " +
                dir.path("p.png") + " > " + dir.path("some") + " 2>&1"),
            0)
      << slurp(dir.path("some"));
  const std::string some = slurp(dir.path("some"));
  EXPECT_EQ(some.find("Muon"), std::string::npos) << some;
  EXPECT_NE(some.find("| AdamW (tuned) |"), std::string::npos) << some;
  EXPECT_TRUE(fs::exists(dir.path("p.png")));
}
