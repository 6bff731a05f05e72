#pragma once
// A config's "hparams" as researchers bring them: the native fields (RomeHparams), or the
// original ROME code's hparams JSON (hparams/ROME/<model>.json) or EasyEdit's ROME YAML
// (hparams/ROME/<model>.yaml), inline or as a file, mapped field by field. Fields that only say
// how the Python code runs (device, stats_dir, ...) are accepted and listed as unused; those
// the tool cannot honour (several layers, another fact token, ...) are refused, all in one message.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "rome_collapse/rome/hparams.h"

namespace rc {

class CausalLM;

struct HparamsSettings {
  RomeHparams hparams;
  std::string file;              // the hparams file ("" when given inline)
  std::string format = "native"; // "native", "rome" (ROME's JSON fields) or "easyedit" (alg_name/model_name)
  // context_template_length_params: (length, samples) of the generated templates.
  std::optional<std::vector<std::pair<int64_t, int64_t>>> template_lengths;
  std::string model_name;        // EasyEdit's model_name, resolved against the hparams file's folder
  // rewrite_module_tmp, layer_module_tmp, ... as given; checked against the model once it is loaded.
  std::map<std::string, std::string> module_names;
  std::optional<int64_t> max_length;  // EasyEdit's evaluation length (used by batch)
  nlohmann::json statistics = nlohmann::json::object();  // mom2_dataset, mom2_n_samples, mom2_dtype, stats_dir
  nlohmann::json unused = nlohmann::json::object();      // field -> why it is accepted but not used
  std::vector<std::string> layer_fields;                 // fields that set the layer ("layer", "layers")
  bool v_loss_layer_given = false;                       // else: the model's last layer (ROME's choice)
};

// `value` is an object (inline) or a string naming a .json / .yaml / .yml file (relative to
// `base_dir`). `where` prefixes messages ("demo.json: hparams"). Statistics (mom2_adjustment) are
// resolved by resolve_statistics once the layer is final.
HparamsSettings parse_hparams(const nlohmann::json& value, const std::string& where,
                              const std::filesystem::path& base_dir);

// With mom2_adjustment and no "stats": ROME's cache path under stats_dir when that file exists,
// else an InputError that says what to provide (a .npz in ROME's layout, or `rome-collapse stats`).
void resolve_statistics(HparamsSettings& settings, const std::string& where);

// Each *_module_tmp / *_module must name this model's module (rewrite_module_tmp exactly the
// weight this tool rewrites at `layer`); InputError listing every mismatch with the expected name.
void check_module_names(const CausalLM& model, const std::map<std::string, std::string>& module_names, int64_t layer,
                        const std::string& where);

// Every field an hparams object may hold (native and imported), for help and suggestions.
std::vector<std::string> known_hparams_fields();

}  // namespace rc
