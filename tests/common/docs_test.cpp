// The documentation's relative links and images point at files that exist (README.md, DEVELOPERS.md,
// results/README.md and every page under docs/).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

namespace {

namespace fs = std::filesystem;

fs::path repo_root() { return fs::path(LOPT_TEST_DATA_DIR).parent_path().parent_path(); }

/// Relative link targets of a Markdown file, outside code blocks: [text](target) and ![alt](target),
/// without their #anchor.
std::vector<std::string> relative_links(const fs::path& file) {
  std::ifstream in(file);
  std::vector<std::string> out;
  std::string line;
  bool code = false;
  static const std::regex link(R"(\]\(([^)\s]+)\))");
  while (std::getline(in, line)) {
    if (line.rfind("```", 0) == 0) code = !code;
    if (code) continue;
    for (std::sregex_iterator it(line.begin(), line.end(), link), end; it != end; ++it) {
      std::string target = (*it)[1];
      if (target.rfind("http://", 0) == 0 || target.rfind("https://", 0) == 0 || target.rfind("mailto:", 0) == 0 ||
          target[0] == '#')
        continue;
      if (auto hash = target.find('#'); hash != std::string::npos) target.resize(hash);
      out.push_back(target);
    }
  }
  return out;
}

}  // namespace

TEST(Docs, EveryRelativeLinkAndImageExists) {
  const fs::path root = repo_root();
  std::vector<fs::path> files = {root / "README.md", root / "DEVELOPERS.md", root / "results/README.md"};
  for (const auto& e : fs::recursive_directory_iterator(root / "docs"))
    if (e.path().extension() == ".md") files.push_back(e.path());
  int checked = 0;
  for (const auto& f : files) {
    ASSERT_TRUE(fs::exists(f)) << f;
    for (const auto& target : relative_links(f)) {
      ++checked;
      EXPECT_TRUE(fs::exists(f.parent_path() / target))
          << fs::relative(f, root).string() << " links to " << target << ", which does not exist";
    }
  }
  EXPECT_GT(checked, 40) << "the link pattern found too few links: is the parser broken?";
}

// README.md stays a first page: what lopt is, the two commands, the headline, the studies, the layout.
TEST(Docs, ReadmeFitsOnAFewScreens) {
  std::ifstream in(repo_root() / "README.md");
  int lines = 0;
  for (std::string l; std::getline(in, l);) ++lines;
  EXPECT_LE(lines, 250) << "README.md has " << lines << " lines: move detail into docs/";
}
