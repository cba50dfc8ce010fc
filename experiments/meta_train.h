#pragma once
/// `lopt meta-train`: runs the MetaTrainer and writes its curves to <output_dir>/meta_train.h5.
#include <nlohmann/json.hpp>

#include <string>

#include "meta/meta_trainer.h"

namespace lopt {

/// Writes the meta-training curves and config of `trainer` to an HDF5 file atomically.
void write_meta_train_log(const std::string& path, const MetaTrainer& trainer);

/// The curves of a meta_train.h5 written by write_meta_train_log, and the config it stored (its
/// "config" attribute), for continuing a run whose resume state was lost.
MetaTrainLog read_meta_train_log(const std::string& path, nlohmann::json* config = nullptr);

}  // namespace lopt
