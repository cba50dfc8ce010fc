#pragma once
/// Helpers shared by the lopt commands.
#include <string>
#include <vector>

namespace lopt {

/// Draws HDF5 result files to a PNG with experiments/plot.py (python3 with h5py and matplotlib).
/// The script is found through $LOPT_PLOT_SCRIPT or the source tree lopt was built from.
/// Throws Error when the script fails.
void run_plot(const std::vector<std::string>& h5_files, const std::string& png);

}  // namespace lopt
