#include "rome_collapse/model/config.h"

#include <nlohmann/json.hpp>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc {

std::string to_string(Architecture arch) {
  switch (arch) {
    case Architecture::GPT2: return "GPT-2";
    case Architecture::GPTJ: return "GPT-J";
    case Architecture::Llama: return "Llama";
  }
  return "unknown";
}

namespace {

const char* kSupportedModelTypes = "\"gpt2\", \"gptj\", \"llama\"";

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
    if (!value.is_boolean()) fail_input(file_, "field '" + field + "' must be true or false, got " + value.dump());
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
                            value.dump());
    return id->get<int64_t>();
  }

  int64_t positive_int_value(const nlohmann::json& value, const std::string& field) const {
    if (!value.is_number_integer())
      fail_input(file_, "field '" + field + "' must be a positive integer, got " + value.dump());
    // An unsigned value above INT64_MAX would wrap to a negative int64 (refused below).
    if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail_input(file_, "field '" + field + "' is " + value.dump() + ", beyond any plausible model");
    int64_t number = value.get<int64_t>();
    if (number <= 0) fail_input(file_, "field '" + field + "' must be a positive integer, got " + value.dump());
    const bool layers = field == "n_layer" || field == "num_hidden_layers";
    const int64_t limit = layers ? kMaxLayers : kMaxDimension;
    if (number > limit)
      fail_input(file_, "field '" + field + "' is " + value.dump() + ", above the sanity limit of " +
                            std::to_string(limit) + (layers ? " layers" : "") +
                            " (corrupt config.json? no supported model comes close)");
    return number;
  }

  double positive_number_value(const nlohmann::json& value, const std::string& field) const {
    if (!value.is_number()) fail_input(file_, "field '" + field + "' must be a number, got " + value.dump());
    double number = value.get<double>();
    if (!(number > 0)) fail_input(file_, "field '" + field + "' must be positive, got " + value.dump());
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

// GPT-2 and GPT-J share the OpenAI-style field names.
void parse_gpt_style(const ConfigReader& reader, ModelConfig& config) {
  config.d_model = reader.positive_int("n_embd");
  config.n_layers = reader.positive_int("n_layer");
  config.n_heads = reader.positive_int("n_head");
  config.n_kv_heads = config.n_heads;
  require_divisible(reader, config.d_model, "n_embd", config.n_heads, "n_head");
  config.head_dim = config.d_model / config.n_heads;
  config.d_ff = reader.positive_int_or("n_inner", 4 * config.d_model);  // null means 4 * n_embd
  config.max_positions = reader.positive_int("n_positions");
  config.norm_eps = reader.positive_number_or("layer_norm_epsilon", 1e-5);
  config.vocab_size = reader.positive_int("vocab_size");
}

}  // namespace

ModelConfig parse_hf_config(const nlohmann::json& json, const std::string& file_for_errors) {
  const std::string& file = file_for_errors;
  if (!json.is_object()) fail_input(file, "config.json must be a JSON object");
  ConfigReader reader(json, file);
  if (!json.contains("model_type")) fail_input(file, "missing required field 'model_type'");
  if (!json.at("model_type").is_string())
    fail_input(file, "field 'model_type' must be a string, got " + json.at("model_type").dump());

  ModelConfig config;
  config.model_type = json.at("model_type").get<std::string>();
  if (config.model_type == "gpt2") {
    config.arch = Architecture::GPT2;
    parse_gpt_style(reader, config);
    config.tie_word_embeddings = reader.bool_or("tie_word_embeddings", true);
    config.rotary_dim = 0;  // learned absolute positions, no rotary
  } else if (config.model_type == "gptj") {
    config.arch = Architecture::GPTJ;
    parse_gpt_style(reader, config);
    config.tie_word_embeddings = reader.bool_or("tie_word_embeddings", false);
    // transformers: absent -> 64 (GPTJConfig default); null -> rotary over the whole head.
    if (!json.contains("rotary_dim")) {
      config.rotary_dim = 64;
    } else {
      config.rotary_dim = reader.positive_int_or("rotary_dim", config.head_dim);
    }
    if (config.rotary_dim > config.head_dim || config.rotary_dim % 2 != 0)
      fail_input(file, "field 'rotary_dim' (" + std::to_string(config.rotary_dim) +
                           ") must be even and at most the head size n_embd / n_head (" +
                           std::to_string(config.head_dim) + ")");
    config.rope_theta = 10000.0;  // fixed in GPT-J
  } else if (config.model_type == "llama") {
    config.arch = Architecture::Llama;
    config.d_model = reader.positive_int("hidden_size");
    config.n_layers = reader.positive_int("num_hidden_layers");
    config.n_heads = reader.positive_int("num_attention_heads");
    config.n_kv_heads = reader.positive_int_or("num_key_value_heads", config.n_heads);
    require_divisible(reader, config.n_heads, "num_attention_heads", config.n_kv_heads, "num_key_value_heads");
    if (reader.has("head_dim")) {
      config.head_dim = reader.positive_int("head_dim");
    } else {
      require_divisible(reader, config.d_model, "hidden_size", config.n_heads, "num_attention_heads");
      config.head_dim = config.d_model / config.n_heads;
    }
    if (config.head_dim % 2 != 0)
      fail_input(file, "field 'head_dim' (" + std::to_string(config.head_dim) + ") must be even for rotary embeddings");
    config.d_ff = reader.positive_int("intermediate_size");
    config.max_positions = reader.positive_int("max_position_embeddings");
    config.norm_eps = reader.positive_number_or("rms_norm_eps", 1e-6);  // LlamaConfig default
    config.vocab_size = reader.positive_int("vocab_size");
    config.tie_word_embeddings = reader.bool_or("tie_word_embeddings", false);
    config.rotary_dim = config.head_dim;

    // transformers >= 4.5x moved rope_theta into "rope_parameters"; older files have it top-level.
    // Scaled RoPE variants (llama3, yarn, linear, ...) would silently give different logits, so refuse them.
    config.rope_theta = reader.positive_number_or("rope_theta", 10000.0);
    for (const char* block : {"rope_parameters", "rope_scaling"}) {
      if (!reader.has(block)) continue;
      const auto& rope = json.at(block);
      if (!rope.is_object()) fail_input(file, std::string("field '") + block + "' must be an object or null");
      if (rope.contains("rope_theta") && !rope.at("rope_theta").is_null())
        config.rope_theta = reader.positive_number_value(rope.at("rope_theta"), std::string(block) + ".rope_theta");
      for (const char* type_field : {"rope_type", "type"}) {
        if (!rope.contains(type_field) || rope.at(type_field).is_null()) continue;
        const auto& type = rope.at(type_field);
        if (!type.is_string() || type.get<std::string>() != "default")
          fail_input(file, std::string("field '") + block + "." + type_field + "' is " + type.dump() +
                               "; only the default (unscaled) RoPE is supported");
      }
    }
    for (const char* bias_field : {"attention_bias", "mlp_bias"}) {
      if (reader.bool_or(bias_field, false))
        fail_input(file, std::string("field '") + bias_field + "' is true; Llama projections with biases are not supported");
    }
  } else if (config.model_type == "t5") {
    // Encoder-decoder: src/model/t5.cpp (Seq2SeqLM), reached by the key commands only.
    fail_input(file, "model_type \"t5\" is an encoder-decoder model: T5 is supported by `keys`, `check` and "
                     "`stats` (the encoder MLP keys), not by edit, batch, generate, perplexity or bench, which need "
                     "a causal decoder (" + std::string(kSupportedModelTypes) + ")");
  } else {
    fail_input(file, "field 'model_type' is \"" + config.model_type + "\"; supported model types: " +
                         kSupportedModelTypes);
  }
  config.bos_token_id = reader.token_id("bos_token_id");
  config.eos_token_id = reader.token_id("eos_token_id");
  return config;
}

ModelConfig load_hf_config(const std::filesystem::path& config_json) {
  std::string text = read_file(config_json);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    fail_input(config_json.string(), std::string("not valid JSON: ") + error.what());
  }
  return parse_hf_config(json, config_json.string());
}

}  // namespace rc
