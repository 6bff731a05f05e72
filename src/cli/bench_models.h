#pragma once
// The models `bench` times (bench_models.cpp).
#include <cstdint>
#include <filesystem>
#include <string>

#include "rome_collapse/model/loaded_model.h"
#include "rome_collapse/rome/edit.h"

namespace rc::cli {

struct BenchModel {
  std::string name;
  LoadedModel loaded;
  EditConfig config;
  std::string perplexity_texts;  // empty: no perplexity timing
};

// Loads (or builds, for a random shape) `name` with its edit config: the paper's layer, steps and
// weight decay, the fixed 21 templates, early stopping off (every edit runs all its steps).
BenchModel make_model(const std::string& name, const std::filesystem::path& shared, int64_t steps_override,
                      const std::string& device, const std::string& dtype);

}  // namespace rc::cli
