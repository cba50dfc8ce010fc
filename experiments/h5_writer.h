#pragma once
/// Minimal HDF5 result writer/reader. A writer builds the file in memory and on commit() writes
/// `<path>.tmp` and renames it to `path`, so an interrupted run or a full disk never leaves a
/// half-written result under the real name (a failed write removes the .tmp and throws IoError).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lopt {

class H5Writer {
 public:
  explicit H5Writer(std::string path);
  ~H5Writer();
  H5Writer(const H5Writer&) = delete;
  H5Writer& operator=(const H5Writer&) = delete;

  /// Creates group `name` (e.g. "train"); parents must exist.
  void group(const std::string& name);
  /// 1-D or n-D dataset of float64 / int64 values; `shape` empty means 1-D of data.size().
  void dataset(const std::string& name, const std::vector<double>& data, std::vector<uint64_t> shape = {});
  void dataset(const std::string& name, const std::vector<int64_t>& data, std::vector<uint64_t> shape = {});
  /// Attributes on the root group (or on `object`, a group/dataset path).
  void attr(const std::string& name, const std::string& value, const std::string& object = "/");
  void attr(const std::string& name, double value, const std::string& object = "/");
  void attr(const std::string& name, int64_t value, const std::string& object = "/");
  /// Copies group `src_group` of the HDF5 file `src_path` (its datasets and attributes) to `name`
  /// here; `src_path` must not be this writer's own path (copy that file aside first).
  void copy_group(const std::string& src_path, const std::string& src_group, const std::string& name);
  /// Closes the file and renames it into place.
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
  bool committed_ = false;
};

/// Reads a string attribute from the root group of an HDF5 file, or from the group `object` (empty
/// string when absent).
std::string h5_read_string_attr(const std::string& path, const std::string& name, const std::string& object = "/");
/// The machine a result was computed on, for its file's "machine" attribute: CPU model (from
/// /proc/cpuinfo, with its vendor, family, model and stepping where listed), logical cores, LibTorch
/// intra-op threads, e.g. "AMD EPYC (AuthenticAMD family 25 model 17 stepping 1), 2 cores, 1 thread".
std::string machine_description();
/// Reads a float64 dataset (flattened).
std::vector<double> h5_read_doubles(const std::string& path, const std::string& dataset);
/// Reads a numeric attribute of the root group.
double h5_read_double_attr(const std::string& path, const std::string& name);

}  // namespace lopt
