// Precompiled header shared by every lopt target: LibTorch and JSON dominate compile time.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>
#include <memory>
#include <map>
