#include "experiments/cli.h"

#include <cstdlib>
#include <filesystem>

#include "common/errors.h"

#ifndef LOPT_SOURCE_DIR
#define LOPT_SOURCE_DIR "."
#endif

namespace lopt {

namespace {
std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}
}  // namespace

void run_plot(const std::vector<std::string>& h5_files, const std::string& png) {
  const char* env = std::getenv("LOPT_PLOT_SCRIPT");
  std::string script = env && *env ? env : std::string(LOPT_SOURCE_DIR) + "/experiments/plot.py";
  if (!std::filesystem::exists(script))
    throw IoError(script, "plot script not found", "set LOPT_PLOT_SCRIPT to experiments/plot.py");
  std::string cmd = "/usr/bin/python3 " + shell_quote(script);
  for (const auto& f : h5_files) cmd += " " + shell_quote(f);
  cmd += " -o " + shell_quote(png);
  int rc = std::system(cmd.c_str());
  if (rc != 0)
    throw Error("plotting failed (" + cmd + " exited with " + std::to_string(rc) +
                "); install python3-h5py and python3-matplotlib");
}

}  // namespace lopt
