#include "tasks/data/image_dataset.h"

#include <gtest/gtest.h>

#include <fstream>

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
