#pragma once
// Architectures as data. One ArchitectureSpec per family says how its Hugging Face config.json
// maps onto ModelConfig, which tensors it has (role, name pattern, shape) and which building blocks
// its decoder uses. The generic decoder (src/model/decoder.cpp), the checkpoint check and the
// random-weight generator all read the same spec; adding a family means adding one spec
// (README "Adding an architecture").
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "rome_collapse/model/config.h"

namespace rc {

// A symbolic tensor dimension, evaluated against a ModelConfig.
enum class Dim {
  Vocab,         // vocab_size
  Model,         // d_model
  Inner,         // d_ff (the rewrite module's input width)
  PositionRows,  // max_positions + position_offset (learned position table)
  QueryWidth,    // n_heads * head_dim
  KVWidth,       // n_kv_heads * head_dim
  FusedQKV,      // (n_heads + 2 n_kv_heads) * head_dim
};

// What a tensor does in the decoder. Per-layer roles have patterns containing "{i}".
enum class TensorRole {
  TokenEmbedding, PositionEmbedding, FinalNorm, FinalNormBias, LmHead, LmHeadBias,
  AttnNorm, AttnNormBias, MlpNorm, MlpNormBias,
  Query, QueryBias, Key, KeyBias, Value, ValueBias, FusedQKV, FusedQKVBias, AttnOut, AttnOutBias,
  MlpUp, MlpUpBias, MlpGate, MlpGateBias, MlpDown, MlpDownBias,
  Count
};

// When a tensor is in the checkpoint.
enum class Presence {
  Always,
  Untied,         // only with a separate LM head (a tied model may still store it: then it must fit)
  AttentionBias,  // config.attention_bias
  MlpBias,        // config.mlp_bias
};

struct TensorSpec {
  TensorRole role;
  std::string pattern;    // Hugging Face name; "{i}" stands for the layer index
  std::vector<Dim> shape; // as stored in the file
  Presence presence = Presence::Always;
  bool conv1d = false;    // stored [in, out] (GPT-2 Conv1D): transposed at load, back at save
};

enum class PositionScheme { Learned, Rotary };
enum class RotaryPairing {
  Interleaved,  // GPT-J rotate_every_two: pairs (0,1), (2,3), ...
  HalfSplit,    // NeoX / Llama rotate_half: pairs (i, i + rotary_dim/2)
};
enum class NormKind { LayerNorm, RMSNorm };
enum class MlpKind { Plain, Gated };  // act(up x) vs act(gate x) * up x
enum class QkvLayout {
  Separate,      // q_proj, k_proj, v_proj
  FusedBlocks,   // one matrix, rows [q | k | v] (GPT-2 c_attn)
  FusedPerHead,  // one matrix, rows [heads][3 (q, k, v)][head_dim] (GPT-NeoX query_key_value)
};
enum class ParallelKind {
  SharedNorm,  // x + attn(ln(x)) + mlp(ln(x)) (GPT-J)
  TwoNorms,    // x + attn(ln1(x)) + mlp(ln2(x)) (GPT-NeoX use_parallel_residual)
};

// config.json field names; the first one present wins (alternative spellings across versions).
struct ConfigFields {
  std::vector<std::string> vocab_size, d_model, n_layers, n_heads, max_positions;
  std::vector<std::string> n_kv_heads;      // empty or absent: n_heads
  std::vector<std::string> head_dim;        // empty or absent: d_model / n_heads
  std::vector<std::string> d_ff;            // absent or null: d_ff_multiple * d_model
  int64_t d_ff_multiple = 0;                // 0: d_ff is required
  std::vector<std::string> norm_eps;
  double default_norm_eps = 1e-5;
  std::vector<std::string> activation;      // activation_function / hidden_act
  std::string default_activation;
  bool default_tied = true;                 // tie_word_embeddings when absent
  // Rotary: an absolute per-head dimension (GPT-J rotary_dim) or a fraction of head_dim (NeoX).
  std::string rotary_dim;                   // absent: default_rotary_dim; null: the whole head
  int64_t default_rotary_dim = 0;           // 0: the whole head
  std::vector<std::string> rotary_fraction; // rotary_pct, partial_rotary_factor (also inside rope_parameters)
  double default_rotary_fraction = 1.0;
  std::vector<std::string> rope_theta;      // top-level spellings; rope_parameters/rope_scaling may override
  double default_rope_theta = 10000.0;
  bool rope_blocks = false;                 // reads rope_scaling / rope_parameters (type, theta, llama3 factors)
  std::string parallel_residual;            // field switching parallel residual; empty: fixed by the spec
  std::string attention_bias, mlp_bias;     // fields switching the biases; empty: defaults below
  bool default_attention_bias = false, default_mlp_bias = false;
  std::vector<std::string> refuse_bias_fields;  // true is refused (Llama attention_bias / mlp_bias)
  std::string sliding_window;               // window size field (null/absent: none)
  std::string use_sliding_window;           // Qwen2: window only if this is true ...
  std::string window_from_layer;            // ... and only from this layer on (max_window_layers)
  // Variants the decoder does not implement, refused by name: a boolean field whose other value is
  // unsupported (OPT do_layer_norm_before: false), a width that must equal d_model (OPT-350m's
  // word_embed_proj_dim projections).
  std::vector<std::pair<std::string, bool>> required_flags;
  std::vector<std::string> equal_to_d_model;
};

struct ArchitectureSpec {
  Architecture arch = Architecture::GPT2;
  std::string model_type;    // config.json model_type
  std::string display_name;  // in messages and reports ("GPT-2")
  ConfigFields fields;
  // Building blocks.
  PositionScheme positions = PositionScheme::Rotary;
  int64_t position_offset = 0;  // learned table row of position p is p + offset (OPT: 2)
  RotaryPairing rotary_pairing = RotaryPairing::HalfSplit;
  NormKind norm = NormKind::LayerNorm;
  MlpKind mlp = MlpKind::Plain;
  QkvLayout qkv = QkvLayout::Separate;
  bool parallel_residual = false;  // default when fields.parallel_residual is absent
  ParallelKind parallel_kind = ParallelKind::SharedNorm;
  bool attention_in_float32 = false;  // GPT-J upcasts q, k, v
  bool scaled_residual_init = false;  // random weights: residual projections std 0.02/sqrt(2 L) (GPT-2)
  // Tensors in the order the random-weight generator draws them: global tensors before the
  // layers, the per-layer ones ("{i}"), then the global ones after the layers.
  std::vector<TensorSpec> tensors;
  TensorRole rewrite_role = TensorRole::MlpDown;
  // A checkpoint may omit this leading prefix from every name (OPT "decoder.*", GPT-2 "h.*").
  std::string optional_prefix;
  // Name endings of buffers that old checkpoints carry and the model never reads (skipped).
  std::vector<std::string> ignored_suffixes;
};

// Every supported decoder family, in the order the messages list them.
const std::vector<ArchitectureSpec>& architecture_specs();
const ArchitectureSpec& architecture_spec(Architecture arch);
// nullptr for an unknown model_type.
const ArchitectureSpec* find_architecture_spec(const std::string& model_type);
// "\"gpt2\", \"gptj\", ..." for messages.
std::string supported_model_types();

// A ModelConfig of `arch` with the family's defaults (activation, tied head, parallel residual,
// biases, rope base), dimensions zero: the start for configs built in code (llama2.c headers,
// benchmark shapes).
ModelConfig default_config(Architecture arch);
// Hugging Face activation names (ACT2FN keys) this decoder implements; nullopt for any other.
std::optional<Activation> activation_from_name(const std::string& name);
extern const char* const kSupportedActivations;  // for messages

int64_t dimension(Dim dim, const ModelConfig& config);
std::vector<int64_t> tensor_shape(const TensorSpec& tensor, const ModelConfig& config);
bool tensor_present(const TensorSpec& tensor, const ModelConfig& config);  // required in the file
std::string tensor_name(const TensorSpec& tensor, int64_t layer);          // "{i}" replaced
bool is_per_layer(const TensorSpec& tensor);

}  // namespace rc
