#include "rome_collapse/experiment/config_schema.h"

#include <algorithm>

#include "rome_collapse/rome/hparams_import.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/fields.h"

namespace rc {
namespace {

std::vector<std::string> unknown_keys(const nlohmann::json& object, const std::vector<std::string>& known) {
  std::vector<std::string> unknown;
  for (const auto& item : object.items())
    if (std::find(known.begin(), known.end(), item.key()) == known.end()) unknown.push_back(item.key());
  return unknown;
}

// The unknown fields of `config[name]` when it is an object ("" when none): "source: name: unknown ...".
template <class Field>
std::string nested_unknown_fields(const nlohmann::json& config, const char* name, const std::string& source) {
  if (!config.contains(name) || !config[name].is_object()) return "";
  const std::vector<std::string> known = field_names(Field{});
  const std::vector<std::string> unknown = unknown_keys(config[name], known);
  return unknown.empty() ? "" : unknown_fields_message(source + ": " + name, unknown, known);
}

}  // namespace

void check_config_fields(const nlohmann::json& config, const std::string& source) {
  std::vector<std::string> parts;
  const std::vector<std::string> known = field_names(ConfigFile{});
  const std::vector<std::string> unknown = unknown_keys(config, known);
  if (!unknown.empty()) {
    const std::vector<std::string> hparams_fields = known_hparams_fields();
    const size_t hparams_like = static_cast<size_t>(std::count_if(unknown.begin(), unknown.end(), [&](const std::string& key) {
      return std::find(hparams_fields.begin(), hparams_fields.end(), key) != hparams_fields.end();
    }));
    std::string message = unknown_fields_message(source, unknown, known);
    if (2 * hparams_like >= unknown.size())
      message += "; this looks like a ROME / EasyEdit hparams file: pass it as `edit --hparams FILE` or "
                 "\"hparams\": \"FILE\" in a config";
    parts.push_back(message);
  }
  parts.push_back(nested_unknown_fields<DatasetField>(config, "dataset", source));
  parts.push_back(nested_unknown_fields<EvaluationField>(config, "evaluation", source));
  parts.push_back(nested_unknown_fields<PerplexityField>(config, "perplexity", source));
  parts.push_back(nested_unknown_fields<CaseRangeField>(config, "cases", source));
  std::string message;
  for (const std::string& part : parts)
    if (!part.empty()) message += (message.empty() ? "" : "; ") + part;
  if (!message.empty()) throw InputError(message);
}

}  // namespace rc
