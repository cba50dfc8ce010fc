#include "experiments/h5_writer.h"

#include <H5Cpp.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/config.h"
#include "common/errors.h"

namespace lopt {

struct H5Writer::Impl {
  // The file is built in memory (HDF5's core driver, no backing store) and written out by
  // write_text_atomic at commit: a full disk or an I/O error is then an IoError from our own write,
  // never a half-torn-down HDF5 file (closing one of those again crashes the HDF5 library).
  std::unique_ptr<H5::H5File> file;
};

namespace {
template <class F>
auto h5_call(const std::string& path, const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const H5::Exception& e) {
    throw IoError(path, "HDF5 error while " + what + ": " + e.getDetailMsg());
  }
}

/// Calls fn(object) on the root group, a group or a dataset named `object`.
template <class F>
void with_object(H5::H5File& file, const std::string& object, F&& fn) {
  if (object == "/") {
    fn(static_cast<H5::H5Object&>(file));
    return;
  }
  H5O_info_t info;
  H5Oget_info_by_name(file.getId(), object.c_str(), &info, H5P_DEFAULT);
  if (info.type == H5O_TYPE_GROUP) {
    H5::Group g = file.openGroup(object);
    fn(static_cast<H5::H5Object&>(g));
  } else {
    H5::DataSet d = file.openDataSet(object);
    fn(static_cast<H5::H5Object&>(d));
  }
}
}  // namespace

H5Writer::H5Writer(std::string path) : impl_(std::make_unique<Impl>()), path_(std::move(path)) {
  std::filesystem::path p(path_);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  H5::Exception::dontPrint();
  h5_call(path_, "creating the file in memory", [&] {
    H5::FileAccPropList fapl;
    fapl.setCore(1 << 20, false);
    impl_->file = std::make_unique<H5::H5File>(path_, H5F_ACC_TRUNC, H5::FileCreatPropList::DEFAULT, fapl);
    return 0;
  });
}

H5Writer::~H5Writer() {
  if (impl_->file) {
    try {
      impl_->file->close();
    } catch (...) {
    }
  }
}

void H5Writer::group(const std::string& name) {
  h5_call(path_, "creating group " + name, [&] {
    impl_->file->createGroup(name);
    return 0;
  });
}

namespace {
template <class T>
void write_dataset(H5::H5File& file, const std::string& tmp, const std::string& name, const std::vector<T>& data,
                   std::vector<uint64_t> shape, const H5::PredType& type) {
  if (shape.empty()) shape = {data.size()};
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  h5_call(tmp, "writing dataset " + name, [&] {
    H5::DataSpace space(static_cast<int>(dims.size()), dims.data());
    auto ds = file.createDataSet(name, type, space);
    if (!data.empty()) ds.write(data.data(), type);
    return 0;
  });
}
}  // namespace

void H5Writer::dataset(const std::string& name, const std::vector<double>& data, std::vector<uint64_t> shape) {
  write_dataset(*impl_->file, path_, name, data, std::move(shape), H5::PredType::NATIVE_DOUBLE);
}

void H5Writer::dataset(const std::string& name, const std::vector<int64_t>& data, std::vector<uint64_t> shape) {
  write_dataset(*impl_->file, path_, name, data, std::move(shape), H5::PredType::NATIVE_INT64);
}

void H5Writer::attr(const std::string& name, const std::string& value, const std::string& object) {
  h5_call(path_, "writing attribute " + name, [&] {
    with_object(*impl_->file, object, [&](H5::H5Object& obj) {
      H5::StrType type(H5::PredType::C_S1, H5T_VARIABLE);
      obj.createAttribute(name, type, H5::DataSpace(H5S_SCALAR)).write(type, value);
    });
    return 0;
  });
}

void H5Writer::attr(const std::string& name, double value, const std::string& object) {
  h5_call(path_, "writing attribute " + name, [&] {
    with_object(*impl_->file, object, [&](H5::H5Object& obj) {
      obj.createAttribute(name, H5::PredType::NATIVE_DOUBLE, H5::DataSpace(H5S_SCALAR)).write(H5::PredType::NATIVE_DOUBLE, &value);
    });
    return 0;
  });
}

void H5Writer::attr(const std::string& name, int64_t value, const std::string& object) {
  h5_call(path_, "writing attribute " + name, [&] {
    with_object(*impl_->file, object, [&](H5::H5Object& obj) {
      obj.createAttribute(name, H5::PredType::NATIVE_INT64, H5::DataSpace(H5S_SCALAR)).write(H5::PredType::NATIVE_INT64, &value);
    });
    return 0;
  });
}

void H5Writer::copy_group(const std::string& src_path, const std::string& src_group, const std::string& name) {
  h5_call(src_path, "copying group " + src_group + " into " + path_, [&] {
    H5::H5File src(src_path, H5F_ACC_RDONLY);
    if (H5Ocopy(src.getId(), src_group.c_str(), impl_->file->getId(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT) < 0)
      throw H5::GroupIException("H5Ocopy", "cannot copy the group");
    return 0;
  });
}

void H5Writer::commit() {
  std::string image;
  h5_call(path_, "finishing the file", [&] {
    impl_->file->flush(H5F_SCOPE_GLOBAL);
    const ssize_t size = H5Fget_file_image(impl_->file->getId(), nullptr, 0);
    if (size < 0) throw H5::FileIException("H5Fget_file_image", "cannot get the file image");
    image.resize(static_cast<size_t>(size));
    if (H5Fget_file_image(impl_->file->getId(), image.data(), image.size()) < 0)
      throw H5::FileIException("H5Fget_file_image", "cannot copy the file image");
    impl_->file->close();
    impl_->file.reset();
    return 0;
  });
  write_text_atomic(path_, image);  // path.tmp, then rename; IoError naming the file when the disk is full
  committed_ = true;
}

std::string h5_read_string_attr(const std::string& path, const std::string& name, const std::string& object) {
  H5::Exception::dontPrint();
  return h5_call(path, "reading attribute " + name + (object == "/" ? std::string() : " of " + object), [&] {
    H5::H5File f(path, H5F_ACC_RDONLY);
    H5::Group g = f.openGroup(object);
    if (!g.attrExists(name)) return std::string();
    auto a = g.openAttribute(name);
    std::string out;
    a.read(a.getStrType(), out);
    return out;
  });
}

double h5_read_double_attr(const std::string& path, const std::string& name) {
  H5::Exception::dontPrint();
  return h5_call(path, "reading attribute " + name, [&] {
    H5::H5File f(path, H5F_ACC_RDONLY);
    auto a = f.openAttribute(name);
    double v = 0;
    a.read(H5::PredType::NATIVE_DOUBLE, &v);
    return v;
  });
}

std::vector<double> h5_read_doubles(const std::string& path, const std::string& dataset) {
  H5::Exception::dontPrint();
  return h5_call(path, "reading dataset " + dataset, [&] {
    H5::H5File f(path, H5F_ACC_RDONLY);
    auto ds = f.openDataSet(dataset);
    auto n = ds.getSpace().getSimpleExtentNpoints();
    std::vector<double> out(static_cast<size_t>(n));
    if (n > 0) ds.read(out.data(), H5::PredType::NATIVE_DOUBLE);
    return out;
  });
}

std::string machine_description() {
  // The model name alone does not tell CPUs apart where a hypervisor shortens it ("AMD EPYC"), and
  // OpenBLAS and oneDNN choose kernels (and so rounding) per CPU: the vendor, family, model and
  // stepping go with it, so experiments/reproduce.py can tell when bit-identity is to be expected.
  std::string cpu = "unknown CPU", vendor, family, model, stepping;
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);) {
    if (line.empty()) break;  // the first processor's block is enough
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    const auto start = line.find_first_not_of(' ', colon + 1);
    const std::string value = start == std::string::npos ? "" : line.substr(start);
    if (key == "model name") cpu = value;
    else if (key == "vendor_id") vendor = value;
    else if (key == "cpu family") family = value;
    else if (key == "model") model = value;
    else if (key == "stepping") stepping = value;
  }
  if (!vendor.empty() && !family.empty() && !model.empty())
    cpu += " (" + vendor + " family " + family + " model " + model + (stepping.empty() ? "" : " stepping " + stepping) + ")";
  const int threads = at::get_num_threads();
  return cpu + ", " + std::to_string(std::max(1u, std::thread::hardware_concurrency())) + " cores, " + std::to_string(threads) +
         (threads == 1 ? " thread" : " threads");
}

}  // namespace lopt
