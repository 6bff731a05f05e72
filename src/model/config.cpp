#include "rome_collapse/model/config.h"

#include <optional>

#include <nlohmann/json.hpp>

#include "rome_collapse/model/architecture.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {

namespace {

// Sanity caps, checked before anything is sized from config.json: far above every real model
// (GPT-2 XL: 48 layers, 1600 wide; Llama-2-70B: 80 layers, 28672 MLP; vocabularies <= 262144;
// contexts <= a few million), yet low enough that no product of two dimensions overflows int64 and
// a corrupt or hostile file is refused with a message instead of an attempted huge allocation.
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxDimension = int64_t{1} << 24;  // 16,777,216: widths, heads, vocabulary, context

// Reads config.json fields with errors that name the file and the field.
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& json, const std::string& file) : json_(json), file_(file) {}

  bool has(const std::string& field) const { return json_.contains(field) && !json_.at(field).is_null(); }

  int64_t positive_int(const std::string& field) const {
    if (!json_.contains(field)) fail_input(file_, "missing required field '" + field + "'");
    return positive_int_value(json_.at(field), field);
  }

  // Absent or null -> fallback.
  int64_t positive_int_or(const std::string& field, int64_t fallback) const {
    return has(field) ? positive_int_value(json_.at(field), field) : fallback;
  }

  double positive_number_or(const std::string& field, double fallback) const {
    if (!has(field)) return fallback;
    return positive_number_value(json_.at(field), field);
  }

  bool bool_or(const std::string& field, bool fallback) const {
    if (!has(field)) return fallback;
    const auto& value = json_.at(field);
    if (!value.is_boolean()) fail_input(file_, "field '" + field + "' must be true or false, got " + json_excerpt(value));
    return value.get<bool>();
  }

  // bos/eos ids come as an int, a list of ints (first one taken) or null.
  std::optional<int64_t> token_id(const std::string& field) const {
    if (!has(field)) return std::nullopt;
    const auto& value = json_.at(field);
    const nlohmann::json* id = &value;
    if (value.is_array()) {
      if (value.empty()) return std::nullopt;
      id = &value.at(0);
    }
    if (!id->is_number_integer() || id->get<int64_t>() < 0)
      fail_input(file_, "field '" + field + "' must be a non-negative integer, a list of them or null, got " +
                            json_excerpt(value));
    return id->get<int64_t>();
  }

  int64_t positive_int_value(const nlohmann::json& value, const std::string& field) const {
    if (!value.is_number_integer())
      fail_input(file_, "field '" + field + "' must be a positive integer, got " + json_excerpt(value));
    // An unsigned value above INT64_MAX would wrap to a negative int64 (refused below).
    if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail_input(file_, "field '" + field + "' is " + json_excerpt(value) + ", beyond any plausible model");
    int64_t number = value.get<int64_t>();
    if (number <= 0) fail_input(file_, "field '" + field + "' must be a positive integer, got " + json_excerpt(value));
    const bool layers = field == "n_layer" || field == "num_hidden_layers";
    const int64_t limit = layers ? kMaxLayers : kMaxDimension;
    if (number > limit)
      fail_input(file_, "field '" + field + "' is " + json_excerpt(value) + ", above the sanity limit of " +
                            std::to_string(limit) + (layers ? " layers" : "") +
                            " (corrupt config.json? no supported model comes close)");
    return number;
  }

  double positive_number_value(const nlohmann::json& value, const std::string& field) const {
    if (!value.is_number()) fail_input(file_, "field '" + field + "' must be a number, got " + json_excerpt(value));
    double number = value.get<double>();
    if (!(number > 0)) fail_input(file_, "field '" + field + "' must be positive, got " + json_excerpt(value));
    return number;
  }

  const std::string& file() const { return file_; }

 private:
  const nlohmann::json& json_;
  std::string file_;
};

void require_divisible(const ConfigReader& reader, int64_t numerator, const std::string& numerator_field,
                       int64_t denominator, const std::string& denominator_field) {
  if (numerator % denominator != 0)
    fail_input(reader.file(), "field '" + numerator_field + "' (" + std::to_string(numerator) +
                                  ") must be divisible by '" + denominator_field + "' (" +
                                  std::to_string(denominator) + ")");
}

// The first of `names` present and not null in config.json; "" if none is.
std::string first_present(const ConfigReader& reader, const std::vector<std::string>& names) {
  for (const auto& name : names)
    if (reader.has(name)) return name;
  return "";
}

int64_t required_int(const ConfigReader& reader, const std::vector<std::string>& names) {
  std::string name = first_present(reader, names);
  return reader.positive_int(name.empty() ? names.at(0) : name);
}

void parse_dimensions(const ConfigReader& reader, const ConfigFields& f, ModelConfig& config) {
  config.d_model = required_int(reader, f.d_model);
  config.n_layers = required_int(reader, f.n_layers);
  config.n_heads = required_int(reader, f.n_heads);
  const std::string kv_field = first_present(reader, f.n_kv_heads);
  config.n_kv_heads = kv_field.empty() ? config.n_heads : reader.positive_int(kv_field);
  if (!kv_field.empty()) require_divisible(reader, config.n_heads, f.n_heads.at(0), config.n_kv_heads, kv_field);
  const std::string head_dim_field = first_present(reader, f.head_dim);
  if (!head_dim_field.empty()) {
    config.head_dim = reader.positive_int(head_dim_field);
  } else {
    require_divisible(reader, config.d_model, f.d_model.at(0), config.n_heads, f.n_heads.at(0));
    config.head_dim = config.d_model / config.n_heads;
  }
  if (f.d_ff_multiple > 0) {  // GPT-2 n_inner: null means d_ff_multiple * d_model
    config.d_ff = reader.positive_int_or(f.d_ff.at(0), f.d_ff_multiple * config.d_model);
  } else {
    config.d_ff = required_int(reader, f.d_ff);
  }
  config.max_positions = required_int(reader, f.max_positions);
  const std::string eps_field = first_present(reader, f.norm_eps);
  config.norm_eps = eps_field.empty() ? f.default_norm_eps : reader.positive_number_or(eps_field, f.default_norm_eps);
  config.vocab_size = required_int(reader, f.vocab_size);
  config.tie_word_embeddings = reader.bool_or("tie_word_embeddings", f.default_tied);
}

// Hugging Face's ACT2FN names that this decoder implements; anything else is refused by name.
void parse_activation(const ConfigReader& reader, const nlohmann::json& json, const ConfigFields& f,
                      ModelConfig& config) {
  const std::string field = first_present(reader, f.activation);
  std::string name = f.default_activation;
  if (!field.empty()) {
    const auto& value = json.at(field);
    if (!value.is_string()) fail_input(reader.file(), "field '" + field + "' must be a string, got " + json_excerpt(value));
    name = value.get<std::string>();
  }
  std::optional<Activation> activation = activation_from_name(name);
  if (!activation)
    fail_input(reader.file(), "field '" + (field.empty() ? f.activation.at(0) : field) + "' is \"" + name +
                                  "\"; supported activations: " + kSupportedActivations);
  config.activation = *activation;
}

// "rope_parameters" (transformers 5) and "rope_scaling" (transformers 4): theta, type and the
// llama3 factors. Any other rope type would silently give different logits, so it is refused.
void parse_rope_blocks(const ConfigReader& reader, const nlohmann::json& json, ModelConfig& config,
                       std::optional<double>& partial_rotary_factor) {
  const std::string& file = reader.file();
  for (const std::string block : {"rope_parameters", "rope_scaling"}) {
    if (!reader.has(block)) continue;
    const auto& rope = json.at(block);
    if (!rope.is_object()) fail_input(file, "field '" + block + "' must be an object or null");
    auto present = [&](const char* key) { return rope.contains(key) && !rope.at(key).is_null(); };
    if (present("rope_theta")) config.rope_theta = reader.positive_number_value(rope.at("rope_theta"), block + ".rope_theta");
    if (present("partial_rotary_factor"))
      partial_rotary_factor = reader.positive_number_value(rope.at("partial_rotary_factor"), block + ".partial_rotary_factor");
    for (const char* type_field : {"rope_type", "type"}) {
      if (!present(type_field)) continue;
      const std::string where = block + "." + type_field;
      const auto& type = rope.at(type_field);
      if (type.is_string() && type.get<std::string>() == "default") continue;
      if (!type.is_string() || type.get<std::string>() != "llama3")
        fail_input(file, "field '" + where + "' is " + type.dump() +
                             "; supported rope types: \"default\" (unscaled) and \"llama3\"");
      auto number = [&](const char* key) {
        if (!present(key))
          fail_input(file, "field '" + where + "' is \"llama3\" but '" + block + "." + key + "' is missing");
        return reader.positive_number_value(rope.at(key), block + "." + key);
      };
      config.rope_scaling.llama3 = true;
      config.rope_scaling.factor = number("factor");
      config.rope_scaling.low_freq_factor = number("low_freq_factor");
      config.rope_scaling.high_freq_factor = number("high_freq_factor");
      if (!present("original_max_position_embeddings"))
        fail_input(file, "field '" + where + "' is \"llama3\" but '" + block +
                             ".original_max_position_embeddings' is missing");
      config.rope_scaling.original_max_positions =
          reader.positive_int_value(rope.at("original_max_position_embeddings"), block + ".original_max_position_embeddings");
      if (!(config.rope_scaling.high_freq_factor > config.rope_scaling.low_freq_factor))
        fail_input(file, "field '" + block + ".high_freq_factor' must exceed '" + block + ".low_freq_factor'");
    }
  }
}

void parse_rotary(const ConfigReader& reader, const nlohmann::json& json, const ConfigFields& f,
                  ModelConfig& config) {
  const std::string& file = reader.file();
  const std::string theta_field = first_present(reader, f.rope_theta);
  config.rope_theta = theta_field.empty() ? f.default_rope_theta : reader.positive_number_or(theta_field, 1.0);
  std::optional<double> partial_rotary_factor;
  if (f.rope_blocks) parse_rope_blocks(reader, json, config, partial_rotary_factor);
  if (!f.rotary_dim.empty()) {
    // GPT-J: absent -> the config class default; null -> rotary over the whole head.
    config.rotary_dim = !json.contains(f.rotary_dim) ? f.default_rotary_dim
                                                      : reader.positive_int_or(f.rotary_dim, config.head_dim);
    if (config.rotary_dim > config.head_dim || config.rotary_dim % 2 != 0)
      fail_input(file, "field '" + f.rotary_dim + "' (" + std::to_string(config.rotary_dim) +
                           ") must be even and at most the head size (" + std::to_string(config.head_dim) + ")");
  } else if (!f.rotary_fraction.empty()) {
    const std::string field = first_present(reader, f.rotary_fraction);
    double fraction = field.empty() ? partial_rotary_factor.value_or(f.default_rotary_fraction)
                                    : reader.positive_number_or(field, 1.0);
    // transformers: rotary_ndims = int(head_size * rotary_pct)
    config.rotary_dim = static_cast<int64_t>(static_cast<double>(config.head_dim) * fraction);
    const std::string name = field.empty() ? f.rotary_fraction.at(0) : field;
    if (fraction > 1.0 || config.rotary_dim <= 0 || config.rotary_dim % 2 != 0)
      fail_input(file, "field '" + name + "' (" + std::to_string(fraction) + ") gives " +
                           std::to_string(config.rotary_dim) + " rotary dims of a " + std::to_string(config.head_dim) +
                           "-dim head; it must be a fraction giving an even, positive number");
  } else {
    config.rotary_dim = config.head_dim;
    if (config.head_dim % 2 != 0)
      fail_input(file, "field 'head_dim' (" + std::to_string(config.head_dim) + ") must be even for rotary embeddings");
  }
}

// Parallel residual, biases, sliding window and the refused variants.
void parse_variants(const ConfigReader& reader, const ArchitectureSpec& spec, ModelConfig& config) {
  const ConfigFields& f = spec.fields;
  const std::string& file = reader.file();
  config.parallel_residual =
      f.parallel_residual.empty() ? spec.parallel_residual : reader.bool_or(f.parallel_residual, spec.parallel_residual);
  config.attention_bias =
      f.attention_bias.empty() ? f.default_attention_bias : reader.bool_or(f.attention_bias, f.default_attention_bias);
  config.mlp_bias = f.mlp_bias.empty() ? f.default_mlp_bias : reader.bool_or(f.mlp_bias, f.default_mlp_bias);
  for (const auto& field : f.refuse_bias_fields)
    if (reader.bool_or(field, false))
      fail_input(file, "field '" + field + "' is true; " + spec.display_name +
                           " projections with biases are not supported");
  for (const auto& [field, expected] : f.required_flags)
    if (reader.bool_or(field, expected) != expected)
      fail_input(file, "field '" + field + "' is " + (expected ? "false" : "true") + "; only " +
                           (expected ? "true" : "false") + " is supported for " + spec.display_name);
  for (const auto& field : f.equal_to_d_model)
    if (reader.has(field) && reader.positive_int(field) != config.d_model)
      fail_input(file, "field '" + field + "' (" + std::to_string(reader.positive_int(field)) +
                           ") differs from the hidden size (" + std::to_string(config.d_model) +
                           "); embedding projections are not supported");
  const bool windowed = f.use_sliding_window.empty() || reader.bool_or(f.use_sliding_window, false);
  if (!f.sliding_window.empty() && windowed && reader.has(f.sliding_window)) {
    config.sliding_window = reader.positive_int(f.sliding_window);
    if (!f.window_from_layer.empty() && reader.has(f.window_from_layer))
      config.sliding_window_from_layer = reader.positive_int(f.window_from_layer);
  }
}

}  // namespace

ModelConfig parse_hf_config(const nlohmann::json& json, const std::string& file_for_errors) {
  const std::string& file = file_for_errors;
  if (!json.is_object()) fail_input(file, "config.json must be a JSON object");
  ConfigReader reader(json, file);
  if (!json.contains("model_type")) fail_input(file, "missing required field 'model_type'");
  if (!json.at("model_type").is_string())
    fail_input(file, "field 'model_type' must be a string, got " + json_excerpt(json.at("model_type")));

  const std::string model_type = json.at("model_type").get<std::string>();
  if (model_type == "t5")  // Encoder-decoder: src/model/t5.cpp (Seq2SeqLM), reached by the key commands only.
    fail_input(file, "model_type \"t5\" is an encoder-decoder model: T5 is supported by `keys`, `check` and "
                     "`stats` (the encoder MLP keys), not by edit, batch, generate, perplexity or bench, which need "
                     "a causal decoder (" + supported_model_types() + ")");
  const ArchitectureSpec* spec = find_architecture_spec(model_type);
  if (!spec)
    fail_input(file, "field 'model_type' is \"" + excerpt(model_type) + "\"; supported model types: " +
                         supported_model_types());
  ModelConfig config = default_config(spec->arch);
  parse_dimensions(reader, spec->fields, config);
  parse_activation(reader, json, spec->fields, config);
  if (spec->positions == PositionScheme::Rotary) parse_rotary(reader, json, spec->fields, config);
  parse_variants(reader, *spec, config);
  config.bos_token_id = reader.token_id("bos_token_id");
  config.eos_token_id = reader.token_id("eos_token_id");
  return config;
}

ModelConfig load_hf_config(const std::filesystem::path& config_json) {
  const nlohmann::json json = parse_json(read_file(config_json), config_json.string());
  return parse_hf_config(json, config_json.string());
}

}  // namespace rc
