#pragma once
// Architecture hyper-parameters, read once from config.json (or a llama2.c header) and
// normalised so that the model code never looks at Hugging Face field names.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace rc {

enum class Architecture { GPT2, GPTJ, Llama };
std::string to_string(Architecture arch);

struct ModelConfig {
  Architecture arch = Architecture::GPT2;
  std::string model_type;           // as written in config.json ("gpt2", "gptj", "llama") or "llama2c"
  int64_t vocab_size = 0;
  int64_t d_model = 0;              // hidden size
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;           // == n_heads without grouped-query attention
  int64_t head_dim = 0;             // d_model / n_heads unless config.json says otherwise
  int64_t d_ff = 0;                 // MLP inner size (n_inner or 4*d_model; intermediate_size)
  int64_t max_positions = 0;        // n_positions / max_position_embeddings / llama2.c seq_len
  double norm_eps = 1e-5;           // layer_norm_epsilon / rms_norm_eps
  double rope_theta = 10000.0;      // Llama and GPT-J rotary base
  int64_t rotary_dim = 0;           // GPT-J: rotary dims per head; Llama: head_dim
  bool tie_word_embeddings = true;
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;
};

// Parses a Hugging Face config.json. InputError naming the file and field for a missing or
// ill-typed field or an unknown model_type.
ModelConfig parse_hf_config(const nlohmann::json& json, const std::string& file_for_errors);
ModelConfig load_hf_config(const std::filesystem::path& config_json);

}  // namespace rc
