#include "tasks/data/image_dataset.h"

#include <gtest/gtest.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "common/errors.h"
#include "common/rng.h"
#include "support.h"

using lopt_test::TempDir;

namespace {
std::string expect_io_error(const std::function<void()>& fn) { return lopt_test::thrown_message<lopt::IoError>(fn); }
}  // namespace

TEST(Idx, ReadsGzipAndPlainFiles) {
  TempDir dir;
  std::vector<uint8_t> data = {1, 2, 3, 4, 5, 6};
  for (bool gz : {true, false}) {
    auto path = dir.path(gz ? "a.gz" : "a");
    lopt_test::write_idx(path, {2, 3}, data, gz);
    auto t = lopt::read_idx_file(path);
    ASSERT_EQ(t.sizes(), (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(t[1][2].item<int>(), 6);
    EXPECT_EQ(t[0][1].item<int>(), 2);
  }
}

TEST(Idx, MissingTruncatedAndWrongMagicAreClearErrors) {
  TempDir dir;
  auto msg = expect_io_error([&] { lopt::read_idx_file(dir.path("nope.gz")); });
  EXPECT_NE(msg.find("nope.gz"), std::string::npos);
  EXPECT_NE(msg.find("dataset-fashion-mnist"), std::string::npos);

  lopt_test::write_idx(dir.path("short"), {10, 3}, {1, 2, 3}, false);  // header says 30 bytes, file has 3
  msg = expect_io_error([&] { lopt::read_idx_file(dir.path("short")); });
  EXPECT_NE(msg.find("truncated"), std::string::npos);
  EXPECT_NE(msg.find("expected 30 bytes"), std::string::npos);

  std::ofstream(dir.path("magic"), std::ios::binary) << "PK\x03\x04garbage";
  msg = expect_io_error([&] { lopt::read_idx_file(dir.path("magic")); });
  EXPECT_NE(msg.find("wrong magic"), std::string::npos);
}

TEST(FashionMnist, LoadsNormalisesAndDownsamples) {
  TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 50, 20);
  auto ds = lopt::load_fashion_mnist(dir.path("fm"), 28);
  EXPECT_EQ(ds->train_x.sizes(), (std::vector<int64_t>{50, 784}));
  EXPECT_EQ(ds->test_x.sizes(), (std::vector<int64_t>{20, 784}));
  EXPECT_NEAR(ds->train_x.mean().item<double>(), 0.0, 1e-4);
  EXPECT_NEAR(ds->train_x.std().item<double>(), 1.0, 1e-3);
  EXPECT_EQ(ds->train_y[13].item<int64_t>(), 3);

  // Area downsampling to 16x16 and 8x8 averages the pixels of each area: the image mean is kept.
  for (int64_t s : {16, 8}) {
    auto small = lopt::load_fashion_mnist(dir.path("fm"), s);
    EXPECT_EQ(small->train_x.size(1), s * s);
    auto full_mean = ds->train_x.mean(1), small_mean = small->train_x.mean(1);
    EXPECT_LT((full_mean - small_mean).abs().max().item<double>(), 0.05) << "size " << s;
  }
}

// Standardisation statistics: float64 in one fixed order (the float64 mean and std as reference),
// and the same at any intra-op thread count. A large tensor makes LibTorch's own float reductions
// split their sums across threads, as they did on Fashion-MNIST's 3.8M training pixels.
TEST(ImageDataset, PixelMomentsAreFloat64AndIndependentOfThreads) {
  auto gen = lopt::make_generator(3);
  const auto x = torch::rand({60000, 64}, gen) * 2.5f + 0.3f;
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = lopt::pixel_moments(x);
  at::set_num_threads(2);
  const auto two = lopt::pixel_moments(x);
  at::set_num_threads(before);
  EXPECT_EQ(one, two);
  const auto x64 = x.to(torch::kFloat64);
  EXPECT_EQ(one.first, static_cast<float>(x64.mean().item<double>()));
  EXPECT_NEAR(one.second, x64.std().item<double>(), 1e-7 * x64.std().item<double>());
  const auto tiny = lopt::pixel_moments(torch::tensor({1.0f, 3.0f}));
  EXPECT_FLOAT_EQ(tiny.first, 2.0f);
  EXPECT_FLOAT_EQ(tiny.second, std::sqrt(2.0f));
}

TEST(FashionMnist, PlainFilesAndInconsistentCounts) {
  TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("plain"), 30, 10, /*gz=*/false);
  EXPECT_EQ(lopt::load_fashion_mnist(dir.path("plain"), 8)->train_x.size(0), 30);

  lopt_test::write_fake_fashion_mnist(dir.path("bad"), 30, 10);
  lopt_test::write_idx(dir.path("bad/train-labels-idx1-ubyte.gz"), {29}, std::vector<uint8_t>(29, 1), true);
  auto msg = expect_io_error([&] { lopt::load_fashion_mnist(dir.path("bad"), 28); });
  EXPECT_NE(msg.find("29 labels"), std::string::npos);

  auto missing = expect_io_error([&] { lopt::load_fashion_mnist(dir.path("empty_folder"), 28); });
  EXPECT_NE(missing.find("train-images-idx3-ubyte"), std::string::npos);
  EXPECT_NE(missing.find("dataset-fashion-mnist"), std::string::npos);
}

TEST(ImageDataset, SeededSamplingIsReproducible) {
  lopt::ImageSource ds(lopt::make_synthetic_dataset(100, 10, 4, 10, 3));
  auto g1 = lopt::make_generator(5), g2 = lopt::make_generator(5), g3 = lopt::make_generator(6);
  auto a = ds.sample(lopt::Split::train, 16, g1), b = ds.sample(lopt::Split::train, 16, g2);
  auto c = ds.sample(lopt::Split::train, 16, g3);
  EXPECT_TRUE(torch::equal(a.at("x"), b.at("x")));
  EXPECT_TRUE(torch::equal(a.at("y"), b.at("y")));
  EXPECT_FALSE(torch::equal(a.at("x"), c.at("x")));
  EXPECT_EQ(a.at("x").sizes(), (std::vector<int64_t>{16, 16}));
}

namespace {
/// A digits CSV in python3-sklearn's format (rows of 64 pixels 0..16 and a label), gzip-compressed.
void write_digits(const std::string& path, int64_t rows, const std::string& extra_line = "") {
  std::string text;
  for (int64_t r = 0; r < rows; ++r) {
    for (int k = 0; k < 64; ++k) text += std::to_string((r * 7 + k * 3) % 17) + ",";
    text += std::to_string(r % 10) + "\n";
  }
  text += extra_line;
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
  gzclose(f);
}
}  // namespace

// The 8x8 digits: the fixed split (first 1,500 train), pixels / 16 standardised with the training
// split's statistics, labels kept; bad files name the line and the package.
TEST(Digits, ReadsTheCsvSplitsAndStandardises) {
  TempDir dir;
  write_digits(dir.path("digits.csv.gz"), 1600);
  auto ds = lopt::load_digits(dir.path("digits.csv.gz"));
  EXPECT_EQ(ds->train_x.sizes(), (std::vector<int64_t>{1500, 64}));
  EXPECT_EQ(ds->test_x.sizes(), (std::vector<int64_t>{100, 64}));
  EXPECT_EQ(ds->image_size, 8);
  EXPECT_NEAR(ds->train_x.mean().item<double>(), 0.0, 1e-4);
  EXPECT_NEAR(ds->train_x.std().item<double>(), 1.0, 1e-3);
  EXPECT_EQ(ds->train_y[13].item<int64_t>(), 3);
  EXPECT_EQ(ds->test_y[0].item<int64_t>(), 0);  // row 1500
  // Row 2, pixel 5: (14 + 15) % 17 = 12, i.e. 12/16 before standardisation; row 0, pixel 0: 0.
  const double a = ds->train_x[2][5].item<double>(), z = ds->train_x[0][0].item<double>();
  const auto r = torch::arange(1500, torch::kFloat64).unsqueeze(1), k = torch::arange(64, torch::kFloat64);
  const double sigma = (torch::remainder(r * 7 + k * 3, 17) / 16).std().item<double>();
  EXPECT_NEAR(a - z, 0.75 / sigma, 1e-5);

  write_digits(dir.path("short.csv.gz"), 3, "1,2,3\n");
  auto msg = expect_io_error([&] { lopt::load_digits(dir.path("short.csv.gz")); });
  EXPECT_NE(msg.find("line 4 has 3 values, expected 65"), std::string::npos) << msg;
  std::string bad_pixel;
  for (int k = 0; k < 64; ++k) bad_pixel += k == 5 ? "17," : "0,";
  write_digits(dir.path("pixel.csv.gz"), 2, bad_pixel + "1\n");
  msg = expect_io_error([&] { lopt::load_digits(dir.path("pixel.csv.gz")); });
  EXPECT_NE(msg.find("line 3: pixel 5 is 17"), std::string::npos) << msg;
  write_digits(dir.path("few.csv.gz"), 40);
  msg = expect_io_error([&] { lopt::load_digits(dir.path("few.csv.gz")); });
  EXPECT_NE(msg.find("has 40 images"), std::string::npos) << msg;
  msg = expect_io_error([&] { lopt::load_digits(dir.path("missing.csv.gz")); });
  EXPECT_NE(msg.find("python3-sklearn"), std::string::npos) << msg;
  EXPECT_NE(msg.find("apt-get install python3-sklearn"), std::string::npos) << msg;
}

// The file python3-sklearn ships (installed by scripts/setup.sh): 1,797 images, every class.
TEST(Digits, TheDebianFileLoads) {
  const std::string file = lopt::default_digits_file();
  if (!std::filesystem::exists(file)) GTEST_SKIP() << file << " is not installed (apt-get install python3-sklearn)";
  auto ds = lopt::load_digits(file);
  EXPECT_EQ(ds->train_x.size(0) + ds->test_x.size(0), 1797);
  EXPECT_EQ(std::get<0>(at::_unique(ds->train_y)).numel(), 10);
  auto src = lopt::make_image_source("digits", "", 8);
  EXPECT_EQ(src->dataset().input_dim(), 64);
}

// The Fashion-MNIST stand-ins: one fixed pixel order (each image's pixels are a permutation of the
// original's, labels unchanged), or inverted intensities with one fixed class order (a bijection).
TEST(FashionMnist, StandInsPermutePixelsOrClasses) {
  TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 40, 10);
  auto base = lopt::make_image_source("fashion_mnist", dir.path("fm"), 8);
  auto pix = lopt::make_image_source("fashion_mnist_pixperm", dir.path("fm"), 8);
  auto cls = lopt::make_image_source("fashion_mnist_classperm", dir.path("fm"), 8);
  const auto& b = base->dataset();
  const auto& p = pix->dataset();
  const auto& c = cls->dataset();
  EXPECT_TRUE(torch::equal(std::get<0>(p.train_x.sort(1)), std::get<0>(b.train_x.sort(1))));
  EXPECT_FALSE(torch::equal(p.train_x, b.train_x));
  EXPECT_TRUE(torch::equal(p.train_y, b.train_y));
  EXPECT_TRUE(torch::equal(c.train_x, b.train_x.neg()));
  // The class map is a function of the class (one image per class decides it) and a bijection.
  std::map<int64_t, int64_t> map;
  for (int64_t i = 0; i < b.train_y.size(0); ++i) {
    const auto from = b.train_y[i].item<int64_t>(), to = c.train_y[i].item<int64_t>();
    if (map.count(from)) {
      EXPECT_EQ(map[from], to);
    }
    map[from] = to;
  }
  std::set<int64_t> images;
  for (const auto& [from, to] : map) images.insert(to);
  EXPECT_EQ(images.size(), map.size());
  EXPECT_NE(map, (std::map<int64_t, int64_t>{{0, 0}, {1, 1}, {2, 2}, {3, 3}, {4, 4}, {5, 5}, {6, 6}, {7, 7}, {8, 8}, {9, 9}}));
}
