#pragma once
/// In-memory image classification data (Fashion-MNIST from IDX files, or synthetic) as
/// normalised float tensors, and ImageSource, its DataSource (batches {"x": [B, D], "y": [B]}).
#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "tasks/data/data_source.h"

namespace lopt {

/// Flattened images: train_x [N, D], train_y [N] (int64), test_x [M, D], test_y [M].
struct ImageDataset {
  std::string name;
  int64_t image_size = 0;  ///< side length (images are image_size x image_size), 0 for non-image data
  int64_t num_classes = 0;
  torch::Tensor train_x, train_y, test_x, test_y;

  int64_t input_dim() const { return train_x.size(1); }
  /// Split::train or Split::test (the images have no validation split).
  const torch::Tensor& x(Split s) const { return s == Split::train ? train_x : test_x; }
  const torch::Tensor& y(Split s) const { return s == Split::train ? train_y : test_y; }
};

/// Image classification batches: {"x": [B, D] float32, "y": [B] int64}; splits train and test.
class ImageSource : public DataSource {
 public:
  explicit ImageSource(std::shared_ptr<const ImageDataset> data) : data_(std::move(data)) {}
  std::vector<Split> splits() const override { return {Split::train, Split::test}; }
  Batch sample(Split split, int64_t batch_size, at::Generator& gen, Shard shard = {}) const override;
  int64_t num_examples(Split split) const override;
  Batch examples(Split split, int64_t begin, int64_t end) const override;
  nlohmann::json hyperparams() const override;
  bool has_labels() const override { return true; }
  const ImageDataset& dataset() const { return *data_; }
  /// The example indices of every rank of a label-skewed shard layout (built once per layout).
  const std::vector<torch::Tensor>& dirichlet_partition(Split split, const Shard& shard) const;

 private:
  std::shared_ptr<const ImageDataset> data_;
  mutable std::mutex partitions_mutex_;
  mutable std::map<std::string, std::vector<torch::Tensor>> partitions_;
};

/// Dataset names make_image_source accepts, for error messages.
const std::vector<std::string>& image_dataset_names();

/// The source for a dataset name at `image_size`; shared per arguments:
///   "fashion_mnist"              from `data_dir` (empty: the default folder)
///   "digits"                     the 8x8 handwritten digits python3-sklearn ships (image_size 8 only;
///                                `data_dir` may hold another digits.csv.gz)
///   "fashion_mnist_pixperm"      Fashion-MNIST with its pixels in one fixed random order (a stand-in
///                                for the Celo2 recipe's gray CIFAR-10: same labels, no spatial prior)
///   "fashion_mnist_classperm"    Fashion-MNIST with inverted intensities and classes in one fixed
///                                random order (a stand-in for SVHN: another input-output map)
///   "synthetic"                  a fixed random linear teacher on Gaussian inputs
std::shared_ptr<const ImageSource> make_image_source(const std::string& dataset, const std::string& data_dir,
                                                     int64_t image_size);

/// Default folder of the Debian package dataset-fashion-mnist; LOPT_DATA_DIR overrides it.
std::string default_fashion_mnist_dir();

/// Reads one IDX file (gzip-compressed or plain). Returns a uint8 tensor with the file's
/// dimensions. Throws IoError naming the path for missing, truncated, wrong-magic files.
torch::Tensor read_idx_file(const std::string& path);

/// Mean and unbiased standard deviation of every element of `x` (as float), summed in float64 in
/// one fixed order: the same values whatever the number of intra-op threads. (LibTorch's parallel
/// float reductions split the sum by thread count, so standardising with them moved normalised
/// pixels by an ulp between --threads 1 and 2 and made meta-training depend on the thread count.)
std::pair<float, float> pixel_moments(const torch::Tensor& x);

/// Loads Fashion-MNIST from `dir` (train-images-idx3-ubyte[.gz], ...), scales pixels to [0,1],
/// standardises with the training split's mean and std, and area-downsamples to
/// image_size x image_size (28, 16 or 8). Results are cached per (dir, image_size).
std::shared_ptr<const ImageDataset> load_fashion_mnist(const std::string& dir, int64_t image_size);

/// Default digits file: python3-sklearn's sklearn/datasets/data/digits.csv.gz; LOPT_DIGITS_FILE overrides it.
std::string default_digits_file();

/// Loads the 8x8 digits CSV (gzip or plain; rows of 64 pixel values 0..16 and a label 0..9): the
/// first 1,500 rows train, the remaining 297 test; pixels / 16, standardised with the training
/// split's mean and std. A missing file is an IoError naming python3-sklearn and the apt-get line.
std::shared_ptr<const ImageDataset> load_digits(const std::string& path);

/// Gaussian inputs labelled by a fixed random linear teacher; for tests and coordinate checks.
std::shared_ptr<const ImageDataset> make_synthetic_dataset(int64_t n_train, int64_t n_test, int64_t image_size,
                                                           int64_t num_classes, uint64_t seed);

}  // namespace lopt
