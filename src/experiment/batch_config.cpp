#include "rome_collapse/experiment/batch_config.h"

#include <algorithm>
#include <stdexcept>

#include "rome_collapse/experiment/config_schema.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/fields.h"

namespace rc {
namespace fs = std::filesystem;
using json = nlohmann::json;

Shard parse_shard(const std::string& text) {
  Shard shard;
  const size_t slash = text.find('/');
  try {
    if (slash == std::string::npos) throw std::invalid_argument("no slash");
    size_t used = 0;
    shard.index = std::stoll(text.substr(0, slash), &used);
    if (used != slash) throw std::invalid_argument("index");
    shard.count = std::stoll(text.substr(slash + 1), &used);
    if (used != text.size() - slash - 1) throw std::invalid_argument("count");
  } catch (const std::exception&) {
    throw InputError("--shard \"" + text + "\": expected i/n, e.g. 0/4");
  }
  if (shard.count < 1 || shard.index < 0 || shard.index >= shard.count)
    throw InputError("--shard \"" + text + "\": expected 0 <= i < n");
  return shard;
}

std::vector<EditMethod> parse_method_list(const json& raw, EditMethod single, const std::string& source,
                                          bool repeats_allowed) {
  if (!raw.contains("methods") || raw["methods"].is_null()) return {single};
  if (raw.contains("method")) throw InputError(source + ": give either \"method\" or \"methods\"");
  if (!raw["methods"].is_array() || raw["methods"].empty())
    throw InputError(source + ": methods: expected a non-empty list");
  std::vector<EditMethod> methods;
  for (const auto& m : raw["methods"]) {
    if (!m.is_string()) throw InputError(source + ": methods: expected strings");
    const EditMethod method = parse_method(m.get<std::string>(), source + ": methods");
    if (!repeats_allowed && std::find(methods.begin(), methods.end(), method) != methods.end())
      throw InputError(source + ": methods: \"" + m.get<std::string>() + "\" appears twice");
    methods.push_back(method);
  }
  return methods;
}

namespace {

void read_dataset_field(BatchSettings& s, const json& raw, const std::string& source, const fs::path& base_dir) {
  if (!raw.contains("dataset") || !raw["dataset"].is_object())
    throw InputError(source + ": missing field \"dataset\" ({\"path\": FILE, \"format\": \"auto\"})");
  DatasetField dataset;
  read_fields(dataset, raw["dataset"], source + ": dataset");
  if (!raw["dataset"].contains("path")) throw InputError(source + ": dataset.path: expected a string");
  const fs::path path = dataset.path;
  s.dataset_path = path.is_absolute() ? path : (base_dir / path).lexically_normal();
  s.dataset_format = parse_dataset_format(dataset.format, source + ": dataset.format");
}

// null (all), a list of case ids, or {"start", "stop"} (non-negative positions).
json read_cases(const json& raw, const std::string& source) {
  if (!raw.contains("cases") || raw["cases"].is_null()) return nullptr;
  const json& cases = raw["cases"];
  if (cases.is_array()) {
    for (const auto& id : cases)
      if (!id.is_number_integer()) throw InputError(source + ": cases: expected a list of integer case ids");
  } else if (cases.is_object()) {
    for (const auto& item : cases.items())  // names: check_config_fields (CaseRangeField)
      if (!item.value().is_number_integer() || item.value().get<int64_t>() < 0)
        throw InputError(source + ": cases: expected {\"start\": N, \"stop\": M} (non-negative positions, stop exclusive)");
  } else {
    throw InputError(source + ": cases: expected a list of case ids or {\"start\", \"stop\"}");
  }
  return cases;
}

std::optional<std::vector<int64_t>> read_collapse_cases(const json& raw, const std::string& source) {
  if (!raw.contains("collapse_cases") || raw["collapse_cases"].is_null()) return std::nullopt;
  if (!raw["collapse_cases"].is_array()) throw InputError(source + ": collapse_cases: expected a list of case ids");
  std::vector<int64_t> ids;
  for (const auto& id : raw["collapse_cases"]) {
    if (!id.is_number_integer()) throw InputError(source + ": collapse_cases: expected integer case ids");
    ids.push_back(id.get<int64_t>());
  }
  return ids;
}

// "evaluation": {"max_length"}, which EasyEdit's hparams.max_length may give too (then they agree).
EvaluationOptions read_evaluation(const EditConfig& config) {
  const json& raw = config.raw;
  const std::string& source = config.source;
  EvaluationField field;
  if (raw.contains("evaluation")) {
    if (!raw["evaluation"].is_object()) throw InputError(source + ": evaluation: expected an object");
    read_fields(field, raw["evaluation"], source + ": evaluation");
    if (field.max_length && *field.max_length < 1)
      throw InputError(source + ": evaluation.max_length: expected a positive integer");
  }
  EvaluationOptions evaluation;
  if (field.max_length) evaluation.max_length = *field.max_length;
  if (config.evaluation_max_length) {
    if (field.max_length && *field.max_length != *config.evaluation_max_length)
      throw InputError(source + ": hparams.max_length and evaluation.max_length differ");
    evaluation.max_length = *config.evaluation_max_length;
  }
  return evaluation;
}

}  // namespace

BatchSettings parse_batch_settings(const EditConfig& config, const fs::path& base_dir) {
  const json& raw = config.raw;
  const std::string& source = config.source;
  // parse_edit_config has refused every unknown field, nested ones included (check_config_fields).
  ConfigFile file;  // the top-level fields' types, as parse_edit_config read them
  read_fields(file, raw, source);
  BatchSettings s;
  read_dataset_field(s, raw, source, base_dir);
  s.methods = parse_method_list(raw, config.method, source, /*repeats_allowed=*/false);
  s.cases = read_cases(raw, source);
  s.collapse_cases = read_collapse_cases(raw, source);
  s.sequential = file.sequential;
  if (file.group_size < 1) throw InputError(source + ": group_size: expected a positive integer (1: one request at a time)");
  s.group_size = file.group_size;
  s.evaluation = read_evaluation(config);
  if (raw.contains("perplexity_selection")) {
    if (config.perplexity_texts.empty())
      throw InputError(source + ": perplexity_selection needs \"perplexity\": {\"texts\": FILE}");
    s.perplexity_selection = parse_text_selection(raw["perplexity_selection"], source + ": perplexity_selection");
  }
  return s;
}

}  // namespace rc
