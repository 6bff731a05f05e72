#pragma once
// Architecture hyper-parameters, read once from config.json (or a llama2.c header) and
// normalised so that the model code never looks at Hugging Face field names.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace rc {

// One value per ArchitectureSpec (architecture.h), which says everything else about the family.
enum class Architecture { GPT2, GPTJ, Llama, GptNeoX, Opt, Qwen2, Mistral };
std::string to_string(Architecture arch);

// MLP activations by their Hugging Face names (activation_function / hidden_act).
enum class Activation {
  GeluTanh,  // gelu_new, gelu_pytorch_tanh, gelu_fast
  Gelu,      // gelu (erf)
  Relu,      // relu
  Silu,      // silu, swish
};

// rope_scaling / rope_parameters of type "llama3" (Llama 3.1 / 3.2): frequencies with wavelengths
// above original_max_positions / low_freq_factor are divided by factor, those below
// original_max_positions / high_freq_factor kept, the ones between smoothly interpolated.
struct RopeScaling {
  bool llama3 = false;
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_positions = 0;
};

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
  double rope_theta = 10000.0;      // rotary base
  int64_t rotary_dim = 0;           // rotary dims per head (GPT-J rotary_dim, NeoX rotary_pct * head_dim); 0: none
  RopeScaling rope_scaling;
  bool tie_word_embeddings = true;
  Activation activation = Activation::GeluTanh;
  bool parallel_residual = false;   // GPT-J always; GPT-NeoX use_parallel_residual
  bool attention_bias = false;      // NeoX attention_bias, OPT enable_bias
  bool mlp_bias = false;            // OPT enable_bias
  int64_t sliding_window = 0;       // > 0: query at position p sees keys at p - sliding_window + 1 .. p
  int64_t sliding_window_from_layer = 0;  // layers below this attend without window (Qwen2 max_window_layers)
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;
};

// Parses a Hugging Face config.json. InputError naming the file and field for a missing or
// ill-typed field or an unknown model_type.
ModelConfig parse_hf_config(const nlohmann::json& json, const std::string& file_for_errors);
ModelConfig load_hf_config(const std::filesystem::path& config_json);

}  // namespace rc
