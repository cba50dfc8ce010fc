#pragma once
/// Byte-level text from Debian packages, as fixed-length windows for language modelling.
///
/// Corpora: "english" (package fortunes: /usr/share/games/fortunes), "german" (package
/// fortunes-de: /usr/share/games/fortunes/de) and "code" (C/C++ headers under /usr/include, from
/// whatever -dev packages are installed). Files are read in sorted path order (fortune index files
/// *.dat and the *.u8 duplicates skipped) and concatenated; the corpus is cut into 1 KiB chunks and
/// every `validation_every`-th chunk goes to the validation split: a deterministic split that
/// spreads validation text over every file.
///
/// Batches: {"tokens": [B, context + 1] int64 bytes}; the model predicts tokens[:, 1:] from
/// tokens[:, :-1]. Training windows start at uniformly random offsets inside the shard's
/// contiguous part of the train split; evaluation walks the validation split in windows that
/// overlap by one byte, so every byte is predicted once.
#include <cstdint>
#include <memory>
#include <string>

#include "tasks/data/data_source.h"

namespace lopt {

struct TextSourceConfig {
  std::string corpus = "english";  ///< english, german, code
  std::string dir;                 ///< folder to read instead of the corpus's default
  int64_t context = 128;           ///< tokens per window (the model's sequence length)
  int64_t max_bytes = 8 << 20;     ///< read files until the corpus has this many bytes
  int64_t validation_every = 10;   ///< every n-th 1 KiB chunk is validation

  static TextSourceConfig from_json(const nlohmann::json& j, const std::string& path);
  nlohmann::json to_json() const;
};

/// The bytes of a corpus, split (cached per corpus, folder and size).
struct TextCorpus {
  std::string name;
  torch::Tensor train, validation;  ///< uint8 [n]
  int64_t files = 0;
};

std::shared_ptr<const TextCorpus> load_text_corpus(const TextSourceConfig& config);
/// The default folder of a corpus and the Debian package that provides it.
std::string text_corpus_dir(const std::string& corpus);
std::string text_corpus_package(const std::string& corpus);

class TextSource : public DataSource {
 public:
  explicit TextSource(TextSourceConfig config);
  std::vector<Split> splits() const override { return {Split::train, Split::validation}; }
  Batch sample(Split split, int64_t batch_size, at::Generator& gen, Shard shard = {}) const override;
  int64_t num_examples(Split split) const override;
  Batch examples(Split split, int64_t begin, int64_t end) const override;
  nlohmann::json hyperparams() const override;
  const TextCorpus& corpus() const { return *corpus_; }

 private:
  const torch::Tensor& bytes(Split split) const;
  TextSourceConfig config_;
  std::shared_ptr<const TextCorpus> corpus_;
};

}  // namespace lopt
