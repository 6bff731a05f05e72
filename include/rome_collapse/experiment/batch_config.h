#pragma once
// The batch config: an edit config (config_schema.h) plus what only `batch` reads from it — the
// dataset, the methods, which cases, sequential, evaluation, perplexity_selection — and the
// --shard split of a run over a job array.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "rome_collapse/eval/evaluation.h"
#include "rome_collapse/io/dataset.h"
#include "rome_collapse/rome/edit.h"

namespace rc {

// `--shard i/n`: the records whose dataset position % n == i.
struct Shard {
  int64_t index = 0, count = 1;
};
Shard parse_shard(const std::string& text);  // "i/n"; InputError otherwise

// Everything batch reads from its config beyond the edit config's own fields.
struct BatchSettings {
  std::filesystem::path dataset_path;
  DatasetFormat dataset_format = DatasetFormat::Auto;
  std::vector<EditMethod> methods;
  nlohmann::json cases = nullptr;  // null (all), [ids], or {"start", "stop"} (positions, stop exclusive)
  std::optional<std::vector<int64_t>> collapse_cases;
  bool sequential = false;
  EvaluationOptions evaluation;
  std::optional<TextSelection> perplexity_selection;
  int64_t group_size = 8;  // independent edits whose keys and v* are computed in one pass per step
};

// `config.raw`'s batch fields, paths relative to `base_dir`; InputError naming the file and field.
// EasyEdit's hparams.max_length (config.evaluation_max_length) must agree with evaluation.max_length.
BatchSettings parse_batch_settings(const EditConfig& config, const std::filesystem::path& base_dir);

// The methods a config asks for: its "methods" (a non-empty list of method names) or else
// `single` (its "method"). Batch keys its results by (case, method), so it forbids a name twice;
// edit, a comparison, takes them as given.
std::vector<EditMethod> parse_method_list(const nlohmann::json& raw, EditMethod single, const std::string& source,
                                          bool repeats_allowed);

}  // namespace rc
