#include "common/config.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/lock.h"
#include "support.h"

using lopt::ConfigError;
using lopt::json;

TEST(ConfigReader, ReadsDefaultsAndRejectsUnknownKeys) {
  json j = {{"width", 64}, {"typo", 1}};
  lopt::ConfigReader r(j, "/task");
  EXPECT_EQ(r.get<int>("width", 8), 64);
  EXPECT_EQ(r.get<int>("depth", 3), 3);
  try {
    r.finish();
    FAIL() << "unknown key accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.path(), "/task/typo");
    EXPECT_NE(std::string(e.what()).find("unknown key"), std::string::npos);
  }
}

TEST(ConfigReader, WrongTypeNamesKeyAndValue) {
  json j = {{"width", "wide"}};
  lopt::ConfigReader r(j, "/task");
  try {
    r.get<int>("width", 8);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.path(), "/task/width");
    EXPECT_NE(std::string(e.what()).find("\"wide\""), std::string::npos);
  }
}

TEST(Config, OverridesParseJsonValuesAndStrings) {
  json cfg = {{"optimizer", {{"lr", 1.0}}}};
  lopt::apply_override(cfg, "optimizer.lr=3e-4");
  lopt::apply_override(cfg, "optimizer.type=adamw");
  lopt::apply_override(cfg, "task.widths=[1,2]");
  EXPECT_DOUBLE_EQ(cfg["optimizer"]["lr"].get<double>(), 3e-4);
  EXPECT_EQ(cfg["optimizer"]["type"], "adamw");
  EXPECT_EQ(cfg["task"]["widths"], json({1, 2}));
  EXPECT_THROW(lopt::apply_override(cfg, "no_equals_sign"), lopt::UsageError);
  EXPECT_THROW(lopt::get_dotted(cfg, "optimizer.missing"), ConfigError);
}

// Lists in a dotted key: an element by index or by its "name" (a comparison's contenders); anything
// else is a config error naming the list and its names.
TEST(Config, OverridesReachIntoListsByIndexOrName) {
  nlohmann::json cfg = nlohmann::json::parse(
      R"({"contenders": [{"name": "AdamW", "lr_grid": [1, 2]}, {"name": "muLO", "optimizer": {"type": "mulo"}}]})");
  lopt::apply_override(cfg, "contenders.muLO.optimizer.checkpoint=x.safetensors");
  lopt::apply_override(cfg, "contenders.0.lr_grid.1=3");
  lopt::apply_override(cfg, "contenders.AdamW.optimizer={\"type\": \"adamw\"}");
  EXPECT_EQ(cfg["contenders"][1]["optimizer"]["checkpoint"], "x.safetensors");
  EXPECT_EQ(cfg["contenders"][0]["lr_grid"], nlohmann::json::parse("[1, 3]"));
  EXPECT_EQ(cfg["contenders"][0]["optimizer"]["type"], "adamw");
  const auto msg = lopt_test::thrown_message<lopt::ConfigError>([&] { lopt::apply_override(cfg, "contenders.Muon.lr=1"); });
  EXPECT_NE(msg.find("/contenders"), std::string::npos) << msg;
  EXPECT_NE(msg.find("names: AdamW, muLO"), std::string::npos) << msg;
  EXPECT_THROW(lopt::apply_override(cfg, "contenders.2.lr=1"), lopt::ConfigError);
}

TEST(Config, LoadJsonFileErrors) {
  lopt_test::TempDir dir;
  EXPECT_THROW(lopt::load_json_file(dir.path("missing.json")), lopt::IoError);
  std::ofstream(dir.path("bad.json")) << "{\"a\": 1,,}";
  try {
    lopt::load_json_file(dir.path("bad.json"));
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos);
  }
}

TEST(Config, AtomicWriteLeavesNoTemporary) {
  lopt_test::TempDir dir;
  lopt::write_text_atomic(dir.path("sub/out.txt"), "hello");
  std::ifstream in(dir.path("sub/out.txt"));
  std::string s;
  in >> s;
  EXPECT_EQ(s, "hello");
  EXPECT_FALSE(std::filesystem::exists(dir.path("sub/out.txt.tmp")));
}

// A config nested ~160k levels deep used to overflow the stack (nlohmann copies values recursively):
// the parse stops at kMaxJsonDepth with a config error (exit 2), in a file and in --set.
TEST(Config, DeeplyNestedJsonIsAnErrorNotACrash) {
  const std::string deep = std::string(160000, '[') + std::string(160000, ']');
  EXPECT_THROW(lopt::parse_json_strict(deep, "config.json"), lopt::ConfigError);
  const std::string objects = [] {
    std::string s;
    for (int i = 0; i < 200; ++i) s += "{\"a\":";
    s += "1";
    for (int i = 0; i < 200; ++i) s += "}";
    return s;
  }();
  try {
    lopt::parse_json_strict(objects, "config.json");
    ADD_FAILURE() << "accepted a config 200 levels deep";
  } catch (const lopt::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("more than 100 levels"), std::string::npos) << e.what();
  }
  // 20 levels is fine.
  std::string ok;
  for (int i = 0; i < 20; ++i) ok += "[";
  for (int i = 0; i < 20; ++i) ok += "]";
  EXPECT_NO_THROW(lopt::parse_json_strict(ok, "config.json"));
  lopt::json config = {{"task", lopt::json::object()}};
  EXPECT_THROW(lopt::apply_override(config, "task.x=" + deep), lopt::UsageError);
  lopt_test::TempDir dir;
  {
    std::ofstream f(dir.path("deep.json"));
    f << "{\"task\": " << deep << "}";
  }
  std::string out;
  EXPECT_EQ(lopt_test::run_lopt("train --config " + dir.path("deep.json"), &out), 2) << out;
  EXPECT_NE(out.find("levels deep"), std::string::npos) << out;
}

// Output locks: exclusive against everything; shared ones (the shards of one sweep) coexist and
// exclude an exclusive one (a plain sweep or --merge on the same folder).
TEST(OutputLock, SharedLocksCoexistAndExcludeAnExclusiveOne) {
  lopt_test::TempDir dir;
  const auto path = dir.path("f/.lopt.lock");
  {
    lopt::OutputLock a(path, "folder", true), b(path, "folder", true);
    EXPECT_THROW(lopt::OutputLock(path, "folder"), lopt::UsageError);
  }
  {
    lopt::OutputLock x(path, "folder");
    EXPECT_THROW(lopt::OutputLock(path, "folder", true), lopt::UsageError);
    EXPECT_THROW(lopt::OutputLock(path, "folder"), lopt::UsageError);
  }
  lopt::OutputLock again(path, "folder");  // released: free again
}
