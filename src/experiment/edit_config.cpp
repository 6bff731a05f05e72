// Reading a config (config_schema.h) into an EditConfig: the schema check, paths relative to the
// config, model names, and hyper-parameters in any of the accepted notations (hparams_import.h).
#include <algorithm>

#include "rome_collapse/experiment/config_schema.h"
#include "rome_collapse/experiment/edit_config.h"
#include "rome_collapse/io/request_file.h"
#include "rome_collapse/model/hub_cache.h"
#include "rome_collapse/model/loaded_model.h"
#include "rome_collapse/rome/edit.h"
#include "rome_collapse/rome/hparams_import.h"
#include "rome_collapse/rome/limits.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/fields.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"
#include "rome_collapse/util/structured_file.h"

namespace rc {
namespace fs = std::filesystem;
namespace {

// A hub name (org/name or name) rather than a path: relative, no "." segments, at most one "/".
bool looks_like_hub_name(const std::string& value) {
  return !value.empty() && fs::path(value).is_relative() && value.find("..") == std::string::npos &&
         value.rfind("./", 0) != 0 && std::count(value.begin(), value.end(), '/') <= 1;
}

std::string resolve_path(const fs::path& base_dir, const std::string& value) {
  if (value.empty() || value.rfind("builtin:", 0) == 0) return value;
  fs::path path(value);
  return path.is_absolute() ? path.string() : (base_dir / path).lexically_normal().string();
}

// Model and tokenizer: a path relative to the config when it exists there, else a hub name is
// kept as it is for load_config_model to look up (config folder, working directory, hub cache).
std::string resolve_model_path(const fs::path& base_dir, const std::string& value) {
  const std::string relative = resolve_path(base_dir, value);
  std::error_code error;
  if (relative == value || fs::exists(relative, error) || !looks_like_hub_name(value)) return relative;
  return value;
}

// Unknown top-level fields, all in one message; a ROME/EasyEdit hparams file given as the
// config gets a hint to pass it as hparams instead.
void check_top_level_fields(const nlohmann::json& json, const std::string& source) {
  const std::vector<std::string> known = field_names(ConfigFile{});
  const std::vector<std::string> hparams_fields = known_hparams_fields();
  std::vector<std::string> unknown;
  size_t hparams_like = 0;
  for (const auto& item : json.items())
    if (std::find(known.begin(), known.end(), item.key()) == known.end()) {
      unknown.push_back(item.key());
      if (std::find(hparams_fields.begin(), hparams_fields.end(), item.key()) != hparams_fields.end()) ++hparams_like;
    }
  if (unknown.empty()) return;
  std::string message = unknown_fields_message(source, unknown, known);
  if (2 * hparams_like >= unknown.size())
    message += "; this looks like a ROME / EasyEdit hparams file: pass it as `edit --hparams FILE` or "
               "\"hparams\": \"FILE\" in a config";
  throw InputError(message);
}

// Whether this machine and libtorch can run the config's device and dtype, with the file and the
// field named (load_model would say it too, but without the config).
void check_device_and_dtype(const std::string& device, const std::string& dtype, const std::string& source) {
  c10::Device parsed_device(c10::kCPU);
  try {
    parsed_device = parse_device(device);
  } catch (const InputError& e) {
    throw InputError(source + ": field \"device\": " + e.what());
  }
  try {
    check_dtype_supported(parse_dtype(dtype), parsed_device, dtype);
  } catch (const InputError& e) {
    throw InputError(source + ": field \"dtype\": " + e.what());
  }
}

void apply_hparams(EditConfig& config, const ConfigFile& file, const ConfigDocument& doc, const ConfigOverrides& overrides) {
  const std::string where = doc.source + ": hparams";
  HparamsSettings settings =
      file.hparams.is_null() ? HparamsSettings{} : parse_hparams(file.hparams, where, doc.base_dir);
  if (overrides.layer) {
    settings.hparams.layer = *overrides.layer;
    if (!settings.layer_fields.empty()) settings.unused["layer"] = "--layer " + std::to_string(*overrides.layer) + " given";
  }
  resolve_statistics(settings, settings.file.empty() ? where : settings.file);
  config.hparams = settings.hparams;
  config.v_loss_layer_given = settings.v_loss_layer_given;
  check_hparams(config.hparams, where);  // documented bounds (limits.h), before any work starts
  if (!settings.model_name.empty()) {
    if (config.model.empty()) config.model = resolve_model_path(".", settings.model_name);
    else settings.unused["model_name"] = "the config's \"model\" (or --model) is used";
  }
  if (settings.template_lengths) {
    const nlohmann::json& spec = file.context_templates;
    const bool explicit_lengths = spec.is_object() && spec.contains("generate") && spec["generate"].is_object() &&
                                  spec["generate"].contains("lengths");
    if (!config.templates.generate) {
      settings.unused["context_template_length_params"] = "context_templates gives a fixed list";
    } else if (explicit_lengths && config.templates.generation.lengths != *settings.template_lengths) {
      throw InputError(where + ".context_template_length_params and context_templates.generate.lengths differ");
    } else {
      config.templates.generation.lengths = *settings.template_lengths;
    }
  }
  check_template_spec(config.templates, doc.source + ": context_templates");
  config.module_names = settings.module_names;
  config.evaluation_max_length = settings.max_length;
  config.hparams_source = {{"file", settings.file.empty() ? nlohmann::json(nullptr) : nlohmann::json(settings.file)},
                           {"format", settings.format},
                           {"unused", settings.unused},
                           {"statistics", settings.statistics}};
}

void read_perplexity(EditConfig& config, const nlohmann::json& ppl, const ConfigDocument& doc) {
  if (ppl.is_null()) return;
  const std::string& source = doc.source;
  if (!ppl.is_object() || !ppl.contains("texts") || !ppl["texts"].is_string())
    throw InputError(source + ": perplexity: expected {\"texts\": FILE, \"batch_size\": N}");
  for (const auto& item : ppl.items())
    if (item.key() != "texts" && item.key() != "batch_size")
      throw InputError(unknown_fields_message(source + ": perplexity", {item.key()}, {"texts", "batch_size"}));
  config.perplexity_texts = resolve_path(doc.base_dir, ppl["texts"].get<std::string>());
  if (ppl.contains("batch_size")) {
    if (!ppl["batch_size"].is_number_integer() || ppl["batch_size"].get<int64_t>() < 1 ||
        ppl["batch_size"].get<int64_t>() > 4096)
      throw InputError(source + ": perplexity.batch_size: expected an integer in [1, 4096]");
    config.perplexity_batch_size = ppl["batch_size"].get<int64_t>();
  }
}

}  // namespace

ConfigDocument read_config_document(const fs::path& path) {
  ConfigDocument doc;
  const std::string text = read_file(path);
  doc.source = path.string();
  doc.sha256 = sha256_hex(text);
  const std::string extension = path.extension().string();
  if (extension == ".yaml" || extension == ".yml") {
    doc.json = parse_yaml(text, doc.source);
  } else {
    const bool looks_like_yaml = text.find(':') != std::string::npos && text.find('{') == std::string::npos;
    doc.json = parse_json(text, doc.source,
                          looks_like_yaml ? "malformed JSON (a YAML file needs the extension .yaml or .yml)"
                                          : "malformed JSON");
  }
  doc.base_dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  return doc;
}

EditConfig parse_edit_config(const ConfigDocument& doc, const ConfigOverrides& overrides) {
  const std::string& source = doc.source;
  if (!doc.json.is_object()) throw InputError(source + ": expected an object of config fields");
  check_top_level_fields(doc.json, source);
  ConfigFile file;
  read_fields(file, doc.json, source);
  EditConfig config;
  config.source = source;
  config.config_sha256 = doc.sha256;
  config.raw = doc.json;
  config.base_dir = doc.base_dir;
  config.model = resolve_model_path(doc.base_dir, file.model);
  config.tokenizer = resolve_model_path(doc.base_dir, file.tokenizer);
  config.add_bos = file.add_bos;
  config.device = file.device;
  config.dtype = file.dtype;
  if (config.device != "cpu" && config.device != "cuda")
    throw InputError(source + ": field \"device\": expected \"cpu\" or \"cuda\"");
  check_device_and_dtype(config.device, config.dtype, source);
  config.method = parse_method(file.method, source + ": field \"method\"");
  if (!file.request.is_null()) config.request = parse_request_record(file.request, source + ": request");
  if (file.context_templates.is_null()) config.templates.generate = true;
  else config.templates = parse_template_spec(file.context_templates, source + ": context_templates");
  apply_hparams(config, file, doc, overrides);
  if (config.model.empty())
    throw InputError(source + ": missing field \"model\" (or --model, or model_name in the hparams)");
  read_perplexity(config, file.perplexity, doc);
  if (!(file.collapse_ratio > 0)) throw InputError(source + ": collapse_ratio: expected a positive number");
  config.collapse_ratio = file.collapse_ratio;
  config.dump_vectors = file.dump_vectors;
  config.record_timings = file.record_timings;
  if (file.prefix_index < 0) throw InputError(source + ": prefix_index: expected a non-negative integer");
  config.prefix_index = file.prefix_index;
  return config;
}

EditConfig parse_edit_config(const nlohmann::json& json, const std::string& source, const fs::path& base_dir,
                             const ConfigOverrides& overrides) {
  ConfigDocument doc;
  doc.json = json;
  doc.source = source;
  doc.base_dir = base_dir;
  return parse_edit_config(doc, overrides);
}

LoadedModel load_config_model(const EditConfig& config) {
  auto locate = [&](const std::string& value, const char* kind) {
    if (value.empty() || value.rfind("builtin:", 0) == 0) return value;
    return resolve_model_location(value, config.base_dir, kind);
  };
  return load_model(locate(config.model, "model"), locate(config.tokenizer, "tokenizer"), config.add_bos, config.device,
                    config.dtype);
}

void fit_to_model(EditConfig& config, const LoadedModel& loaded) {
  if (!config.v_loss_layer_given) config.hparams.v_loss_layer = loaded.model->config().n_layers - 1;
}

EditConfig read_edit_config(const fs::path& path) { return parse_edit_config(read_config_document(path)); }

}  // namespace rc
