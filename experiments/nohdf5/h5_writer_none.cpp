// H5Writer for builds without HDF5 (-DLOPT_HDF5=OFF, e.g. a GPU machine without HDF5's C++ headers):
// everything runs, but writing or reading a result file is a one-line usage error.
#include "common/errors.h"
#include "experiments/h5_writer.h"

namespace lopt {
namespace {
[[noreturn]] void no_hdf5(const std::string& path) {
  throw UsageError("cannot write or read " + path + ": this lopt was built with -DLOPT_HDF5=OFF (no HDF5); run without an "
                   "output file, or rebuild with libhdf5-dev installed");
}
}  // namespace

struct H5Writer::Impl {};
H5Writer::H5Writer(std::string path) : path_(std::move(path)) { no_hdf5(path_); }
H5Writer::~H5Writer() = default;
void H5Writer::group(const std::string&) {}
void H5Writer::dataset(const std::string&, const std::vector<double>&, std::vector<uint64_t>) {}
void H5Writer::dataset(const std::string&, const std::vector<int64_t>&, std::vector<uint64_t>) {}
void H5Writer::attr(const std::string&, const std::string&, const std::string&) {}
void H5Writer::attr(const std::string&, double, const std::string&) {}
void H5Writer::attr(const std::string&, int64_t, const std::string&) {}
void H5Writer::commit() {}
std::string h5_read_string_attr(const std::string& path, const std::string&) { no_hdf5(path); }
std::vector<double> h5_read_doubles(const std::string& path, const std::string&) { no_hdf5(path); }
double h5_read_double_attr(const std::string& path, const std::string&) { no_hdf5(path); }
}  // namespace lopt
