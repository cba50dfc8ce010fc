#pragma once
/// `lopt meta-train`: runs the MetaTrainer and writes its curves to <output_dir>/meta_train.h5.
#include <string>

#include "meta/meta_trainer.h"

namespace lopt {

/// Writes the meta-training curves and config of `trainer` to an HDF5 file atomically.
void write_meta_train_log(const std::string& path, const MetaTrainer& trainer);

}  // namespace lopt
