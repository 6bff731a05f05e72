#pragma once
// The config file as the edit reads it: the document (JSON or YAML), its fields checked into an
// EditConfig (rome/edit.h), and the model it names loaded and fitted to the config.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "rome_collapse/model/loaded_model.h"
#include "rome_collapse/rome/edit.h"

namespace rc {

// load_model for a config: model and tokenizer as paths (relative to the config first), hub-cache
// folders or Hugging Face names in the local cache (model/hub_cache.h).
LoadedModel load_config_model(const EditConfig& config);

// Settings that depend on the loaded model: an unset v_loss_layer becomes its last layer (as in
// every ROME hparams file) instead of GPT-2-XL's 47.
void fit_to_model(EditConfig& config, const LoadedModel& loaded);

// A config file as read (JSON, or YAML for .yaml/.yml) before its fields are checked.
struct ConfigDocument {
  nlohmann::json json = nlohmann::json::object();
  std::string source = "command line";  // file path (for errors and provenance)
  std::string sha256;                   // of the file's text ("" for a config built from flags)
  std::filesystem::path base_dir = ".";  // relative paths in the config are relative to this
};
ConfigDocument read_config_document(const std::filesystem::path& path);

// Settings given on the command line that parsing must apply before checking (the layer decides
// which statistics file and module names are expected).
struct ConfigOverrides {
  std::optional<int64_t> layer;
};

// Reads and validates a config (config_schema.h: the fields every command accepts). Paths are
// relative to the config file's directory.
EditConfig read_edit_config(const std::filesystem::path& path);
EditConfig parse_edit_config(const nlohmann::json& json, const std::string& source, const std::filesystem::path& base_dir,
                             const ConfigOverrides& overrides = {});
EditConfig parse_edit_config(const ConfigDocument& document, const ConfigOverrides& overrides = {});

}  // namespace rc
