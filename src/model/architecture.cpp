// The supported decoder families as data (see architecture.h). Names and shapes follow each
// family's Hugging Face checkpoints; the comments name the transformers module they come from.
#include "rome_collapse/model/architecture.h"

#include <map>
#include <stdexcept>

namespace rc {

namespace {

using D = Dim;
using R = TensorRole;

ArchitectureSpec named(Architecture arch, const std::string& model_type, const std::string& display_name) {
  ArchitectureSpec spec;
  spec.arch = arch;
  spec.model_type = model_type;
  spec.display_name = display_name;
  return spec;
}

// GPT-2's config.json names (n_embd, n_layer, ...), which GPT-J's config keeps; d_ff defaults to 4 d_model.
void set_gpt2_config_names(ConfigFields& f) {
  f.vocab_size = {"vocab_size"}, f.d_model = {"n_embd"}, f.n_layers = {"n_layer"}, f.n_heads = {"n_head"};
  f.max_positions = {"n_positions"}, f.d_ff = {"n_inner"}, f.d_ff_multiple = 4;
  f.norm_eps = {"layer_norm_epsilon"}, f.activation = {"activation_function"}, f.default_activation = "gelu_new";
}

// GPT-2 (modeling_gpt2.py): learned positions, pre-LN, Conv1D weights, fused [q | k | v], tied head.
ArchitectureSpec gpt2_spec() {
  ArchitectureSpec s = named(Architecture::GPT2, "gpt2", "GPT-2");
  auto& f = s.fields;
  set_gpt2_config_names(f);
  f.default_tied = true;
  s.positions = PositionScheme::Learned;
  s.qkv = QkvLayout::FusedBlocks;
  s.scaled_residual_init = true;
  const std::string h = "transformer.h.{i}.";
  s.tensors = {
      {R::TokenEmbedding, "transformer.wte.weight", {D::Vocab, D::Model}},
      {R::PositionEmbedding, "transformer.wpe.weight", {D::PositionRows, D::Model}},
      {R::AttnNorm, h + "ln_1.weight", {D::Model}},
      {R::AttnNormBias, h + "ln_1.bias", {D::Model}},
      {R::MlpNorm, h + "ln_2.weight", {D::Model}},
      {R::MlpNormBias, h + "ln_2.bias", {D::Model}},
      {R::FusedQKV, h + "attn.c_attn.weight", {D::Model, D::FusedQKV}, Presence::Always, true},
      {R::FusedQKVBias, h + "attn.c_attn.bias", {D::FusedQKV}},
      {R::AttnOut, h + "attn.c_proj.weight", {D::QueryWidth, D::Model}, Presence::Always, true},
      {R::AttnOutBias, h + "attn.c_proj.bias", {D::Model}},
      {R::MlpUp, h + "mlp.c_fc.weight", {D::Model, D::Inner}, Presence::Always, true},
      {R::MlpUpBias, h + "mlp.c_fc.bias", {D::Inner}},
      {R::MlpDown, h + "mlp.c_proj.weight", {D::Inner, D::Model}, Presence::Always, true},
      {R::MlpDownBias, h + "mlp.c_proj.bias", {D::Model}},
      {R::FinalNorm, "transformer.ln_f.weight", {D::Model}},
      {R::FinalNormBias, "transformer.ln_f.bias", {D::Model}},
      {R::LmHead, "lm_head.weight", {D::Vocab, D::Model}, Presence::Untied},
  };
  s.optional_prefix = "transformer.";
  s.ignored_suffixes = {".attn.bias", ".attn.masked_bias"};
  return s;
}

// GPT-J (modeling_gptj.py): one LayerNorm feeding attention and MLP in parallel, interleaved
// partial rotary, untied head with bias.
ArchitectureSpec gptj_spec() {
  ArchitectureSpec s = named(Architecture::GPTJ, "gptj", "GPT-J");
  auto& f = s.fields;
  set_gpt2_config_names(f);
  f.default_tied = false;
  f.rotary_dim = "rotary_dim", f.default_rotary_dim = 64;  // GPTJConfig default; null: the whole head
  s.rotary_pairing = RotaryPairing::Interleaved;
  s.parallel_residual = true, s.parallel_kind = ParallelKind::SharedNorm;
  s.attention_in_float32 = true;
  const std::string h = "transformer.h.{i}.";
  s.tensors = {
      {R::TokenEmbedding, "transformer.wte.weight", {D::Vocab, D::Model}},
      {R::AttnNorm, h + "ln_1.weight", {D::Model}},
      {R::AttnNormBias, h + "ln_1.bias", {D::Model}},
      {R::Query, h + "attn.q_proj.weight", {D::QueryWidth, D::Model}},
      {R::Key, h + "attn.k_proj.weight", {D::KVWidth, D::Model}},
      {R::Value, h + "attn.v_proj.weight", {D::KVWidth, D::Model}},
      {R::AttnOut, h + "attn.out_proj.weight", {D::Model, D::QueryWidth}},
      {R::MlpUp, h + "mlp.fc_in.weight", {D::Inner, D::Model}},
      {R::MlpUpBias, h + "mlp.fc_in.bias", {D::Inner}},
      {R::MlpDown, h + "mlp.fc_out.weight", {D::Model, D::Inner}},
      {R::MlpDownBias, h + "mlp.fc_out.bias", {D::Model}},
      {R::FinalNorm, "transformer.ln_f.weight", {D::Model}},
      {R::FinalNormBias, "transformer.ln_f.bias", {D::Model}},
      {R::LmHead, "lm_head.weight", {D::Vocab, D::Model}, Presence::Untied},
      {R::LmHeadBias, "lm_head.bias", {D::Vocab}},
  };
  s.optional_prefix = "transformer.";
  s.ignored_suffixes = {".attn.bias", ".attn.masked_bias"};
  return s;
}

// The Llama layout (modeling_llama.py), shared by Qwen2 and Mistral: RMSNorm, rotate_half rotary
// on the whole head, grouped-query attention, SwiGLU MLP.
ArchitectureSpec llama_like_spec(Architecture arch, const std::string& model_type, const std::string& display,
                                 bool qkv_bias) {
  ArchitectureSpec s = named(arch, model_type, display);
  auto& f = s.fields;
  f.vocab_size = {"vocab_size"}, f.d_model = {"hidden_size"}, f.n_layers = {"num_hidden_layers"};
  f.n_heads = {"num_attention_heads"}, f.n_kv_heads = {"num_key_value_heads"}, f.head_dim = {"head_dim"};
  f.max_positions = {"max_position_embeddings"}, f.d_ff = {"intermediate_size"};
  f.norm_eps = {"rms_norm_eps"}, f.default_norm_eps = 1e-6;  // LlamaConfig / Qwen2Config / MistralConfig default
  f.activation = {"hidden_act"}, f.default_activation = "silu";
  f.default_tied = false;
  f.rope_theta = {"rope_theta"}, f.rope_blocks = true;
  s.norm = NormKind::RMSNorm;
  s.mlp = MlpKind::Gated;
  const std::string l = "model.layers.{i}.";
  s.tensors = {
      {R::TokenEmbedding, "model.embed_tokens.weight", {D::Vocab, D::Model}},
      {R::AttnNorm, l + "input_layernorm.weight", {D::Model}},
      {R::Query, l + "self_attn.q_proj.weight", {D::QueryWidth, D::Model}},
      {R::Key, l + "self_attn.k_proj.weight", {D::KVWidth, D::Model}},
      {R::Value, l + "self_attn.v_proj.weight", {D::KVWidth, D::Model}},
      {R::AttnOut, l + "self_attn.o_proj.weight", {D::Model, D::QueryWidth}},
      {R::MlpNorm, l + "post_attention_layernorm.weight", {D::Model}},
      {R::MlpGate, l + "mlp.gate_proj.weight", {D::Inner, D::Model}},
      {R::MlpUp, l + "mlp.up_proj.weight", {D::Inner, D::Model}},
      {R::MlpDown, l + "mlp.down_proj.weight", {D::Model, D::Inner}},
      {R::FinalNorm, "model.norm.weight", {D::Model}},
      {R::LmHead, "lm_head.weight", {D::Vocab, D::Model}, Presence::Untied},
  };
  if (qkv_bias) {  // Qwen2: biases on q, k and v only (added before the rotation)
    s.tensors.insert(s.tensors.begin() + 5, {{R::QueryBias, l + "self_attn.q_proj.bias", {D::QueryWidth}},
                                             {R::KeyBias, l + "self_attn.k_proj.bias", {D::KVWidth}},
                                             {R::ValueBias, l + "self_attn.v_proj.bias", {D::KVWidth}}});
  }
  s.optional_prefix = "model.";
  s.ignored_suffixes = {".rotary_emb.inv_freq"};
  return s;
}

ArchitectureSpec llama_spec() {
  ArchitectureSpec s = llama_like_spec(Architecture::Llama, "llama", "Llama", false);
  s.fields.refuse_bias_fields = {"attention_bias", "mlp_bias"};
  return s;
}

ArchitectureSpec qwen2_spec() {
  ArchitectureSpec s = llama_like_spec(Architecture::Qwen2, "qwen2", "Qwen2", true);
  s.fields.sliding_window = "sliding_window";
  s.fields.use_sliding_window = "use_sliding_window";
  s.fields.window_from_layer = "max_window_layers";
  return s;
}

ArchitectureSpec mistral_spec() {
  ArchitectureSpec s = llama_like_spec(Architecture::Mistral, "mistral", "Mistral", false);
  s.fields.sliding_window = "sliding_window";
  return s;
}

// GPT-NeoX / Pythia (modeling_gpt_neox.py): fused per-head query_key_value, partial rotate_half
// rotary, parallel residual with two LayerNorms (use_parallel_residual), untied embed_out.
ArchitectureSpec gpt_neox_spec() {
  ArchitectureSpec s = named(Architecture::GptNeoX, "gpt_neox", "GPT-NeoX");
  auto& f = s.fields;
  f.vocab_size = {"vocab_size"}, f.d_model = {"hidden_size"}, f.n_layers = {"num_hidden_layers"};
  f.n_heads = {"num_attention_heads"}, f.max_positions = {"max_position_embeddings"};
  f.d_ff = {"intermediate_size"};
  f.norm_eps = {"layer_norm_eps"}, f.default_norm_eps = 1e-5;
  f.activation = {"hidden_act"}, f.default_activation = "gelu";
  f.default_tied = false;
  f.rotary_fraction = {"rotary_pct", "partial_rotary_factor"};  // transformers 4 / 5 spellings
  f.default_rotary_fraction = 0.25;                               // GPTNeoXConfig default
  f.rope_theta = {"rope_theta", "rotary_emb_base"}, f.rope_blocks = true;
  f.parallel_residual = "use_parallel_residual";
  f.attention_bias = "attention_bias", f.default_attention_bias = true;
  s.parallel_residual = true, s.parallel_kind = ParallelKind::TwoNorms;
  s.qkv = QkvLayout::FusedPerHead;
  const std::string l = "gpt_neox.layers.{i}.";
  s.tensors = {
      {R::TokenEmbedding, "gpt_neox.embed_in.weight", {D::Vocab, D::Model}},
      {R::AttnNorm, l + "input_layernorm.weight", {D::Model}},
      {R::AttnNormBias, l + "input_layernorm.bias", {D::Model}},
      {R::MlpNorm, l + "post_attention_layernorm.weight", {D::Model}},
      {R::MlpNormBias, l + "post_attention_layernorm.bias", {D::Model}},
      {R::FusedQKV, l + "attention.query_key_value.weight", {D::FusedQKV, D::Model}},
      {R::FusedQKVBias, l + "attention.query_key_value.bias", {D::FusedQKV}, Presence::AttentionBias},
      {R::AttnOut, l + "attention.dense.weight", {D::Model, D::QueryWidth}},
      {R::AttnOutBias, l + "attention.dense.bias", {D::Model}, Presence::AttentionBias},
      {R::MlpUp, l + "mlp.dense_h_to_4h.weight", {D::Inner, D::Model}},
      {R::MlpUpBias, l + "mlp.dense_h_to_4h.bias", {D::Inner}},
      {R::MlpDown, l + "mlp.dense_4h_to_h.weight", {D::Model, D::Inner}},
      {R::MlpDownBias, l + "mlp.dense_4h_to_h.bias", {D::Model}},
      {R::FinalNorm, "gpt_neox.final_layer_norm.weight", {D::Model}},
      {R::FinalNormBias, "gpt_neox.final_layer_norm.bias", {D::Model}},
      {R::LmHead, "embed_out.weight", {D::Vocab, D::Model}, Presence::Untied},
  };
  s.optional_prefix = "gpt_neox.";
  // Buffers of older Pythia files (causal mask, masked_bias, rotary inverse frequencies).
  s.ignored_suffixes = {".attention.bias", ".attention.masked_bias", ".attention.rotary_emb.inv_freq"};
  return s;
}

// OPT (modeling_opt.py): learned positions at row p + 2, pre-LN (do_layer_norm_before), ReLU,
// biases everywhere (enable_bias), tied head.
ArchitectureSpec opt_spec() {
  ArchitectureSpec s = named(Architecture::Opt, "opt", "OPT");
  auto& f = s.fields;
  f.vocab_size = {"vocab_size"}, f.d_model = {"hidden_size"}, f.n_layers = {"num_hidden_layers"};
  f.n_heads = {"num_attention_heads"}, f.max_positions = {"max_position_embeddings"}, f.d_ff = {"ffn_dim"};
  f.default_norm_eps = 1e-5;  // nn.LayerNorm's default; OPT has no field for it
  f.activation = {"activation_function"}, f.default_activation = "relu";
  f.default_tied = true;
  f.attention_bias = "enable_bias", f.default_attention_bias = true;
  f.mlp_bias = "enable_bias", f.default_mlp_bias = true;
  // Post-LN OPT (opt-350m), no final LayerNorm, LayerNorms without weights, embedding projections.
  f.required_flags = {{"do_layer_norm_before", true}, {"_remove_final_layer_norm", false},
                      {"layer_norm_elementwise_affine", true}};
  f.equal_to_d_model = {"word_embed_proj_dim"};
  s.positions = PositionScheme::Learned;
  s.position_offset = 2;  // OPTLearnedPositionalEmbedding
  const std::string l = "model.decoder.layers.{i}.";
  s.tensors = {
      {R::TokenEmbedding, "model.decoder.embed_tokens.weight", {D::Vocab, D::Model}},
      {R::PositionEmbedding, "model.decoder.embed_positions.weight", {D::PositionRows, D::Model}},
      {R::AttnNorm, l + "self_attn_layer_norm.weight", {D::Model}},
      {R::AttnNormBias, l + "self_attn_layer_norm.bias", {D::Model}},
      {R::Query, l + "self_attn.q_proj.weight", {D::QueryWidth, D::Model}},
      {R::QueryBias, l + "self_attn.q_proj.bias", {D::QueryWidth}, Presence::AttentionBias},
      {R::Key, l + "self_attn.k_proj.weight", {D::KVWidth, D::Model}},
      {R::KeyBias, l + "self_attn.k_proj.bias", {D::KVWidth}, Presence::AttentionBias},
      {R::Value, l + "self_attn.v_proj.weight", {D::KVWidth, D::Model}},
      {R::ValueBias, l + "self_attn.v_proj.bias", {D::KVWidth}, Presence::AttentionBias},
      {R::AttnOut, l + "self_attn.out_proj.weight", {D::Model, D::QueryWidth}},
      {R::AttnOutBias, l + "self_attn.out_proj.bias", {D::Model}, Presence::AttentionBias},
      {R::MlpNorm, l + "final_layer_norm.weight", {D::Model}},
      {R::MlpNormBias, l + "final_layer_norm.bias", {D::Model}},
      {R::MlpUp, l + "fc1.weight", {D::Inner, D::Model}},
      {R::MlpUpBias, l + "fc1.bias", {D::Inner}, Presence::MlpBias},
      {R::MlpDown, l + "fc2.weight", {D::Model, D::Inner}},
      {R::MlpDownBias, l + "fc2.bias", {D::Model}, Presence::MlpBias},
      {R::FinalNorm, "model.decoder.final_layer_norm.weight", {D::Model}},
      {R::FinalNormBias, "model.decoder.final_layer_norm.bias", {D::Model}},
      {R::LmHead, "lm_head.weight", {D::Vocab, D::Model}, Presence::Untied},
  };
  s.optional_prefix = "model.";  // some OPT files name tensors "decoder.*"
  return s;
}

}  // namespace

const std::vector<ArchitectureSpec>& architecture_specs() {
  static const std::vector<ArchitectureSpec> specs = {gpt2_spec(),    gptj_spec(), llama_spec(),   gpt_neox_spec(),
                                                      opt_spec(),     qwen2_spec(), mistral_spec()};
  return specs;
}

const ArchitectureSpec& architecture_spec(Architecture arch) {
  for (const auto& spec : architecture_specs())
    if (spec.arch == arch) return spec;
  throw std::logic_error("no ArchitectureSpec for architecture " + std::to_string(static_cast<int>(arch)));
}

const ArchitectureSpec* find_architecture_spec(const std::string& model_type) {
  for (const auto& spec : architecture_specs())
    if (spec.model_type == model_type) return &spec;
  return nullptr;
}

std::string supported_model_types() {
  std::string text;
  for (const auto& spec : architecture_specs()) text += (text.empty() ? "\"" : ", \"") + spec.model_type + "\"";
  return text;
}

std::string to_string(Architecture arch) { return architecture_spec(arch).display_name; }

const char* const kSupportedActivations = "gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish";

std::optional<Activation> activation_from_name(const std::string& name) {
  static const std::map<std::string, Activation> kActivations = {
      {"gelu_new", Activation::GeluTanh}, {"gelu_pytorch_tanh", Activation::GeluTanh},
      {"gelu_fast", Activation::GeluTanh}, {"gelu", Activation::Gelu},
      {"relu", Activation::Relu},         {"silu", Activation::Silu},
      {"swish", Activation::Silu}};
  auto found = kActivations.find(name);
  if (found == kActivations.end()) return std::nullopt;
  return found->second;
}

ModelConfig default_config(Architecture arch) {
  const ArchitectureSpec& spec = architecture_spec(arch);
  const ConfigFields& f = spec.fields;
  ModelConfig config;
  config.arch = arch;
  config.model_type = spec.model_type;
  config.norm_eps = f.default_norm_eps;
  config.activation = activation_from_name(f.default_activation).value();
  config.tie_word_embeddings = f.default_tied;
  config.parallel_residual = spec.parallel_residual;
  config.attention_bias = f.default_attention_bias;
  config.mlp_bias = f.default_mlp_bias;
  config.rope_theta = f.default_rope_theta;
  return config;
}

int64_t dimension(Dim dim, const ModelConfig& c) {
  switch (dim) {
    case Dim::Vocab: return c.vocab_size;
    case Dim::Model: return c.d_model;
    case Dim::Inner: return c.d_ff;
    case Dim::PositionRows: return c.max_positions + architecture_spec(c.arch).position_offset;
    case Dim::QueryWidth: return c.n_heads * c.head_dim;
    case Dim::KVWidth: return c.n_kv_heads * c.head_dim;
    case Dim::FusedQKV: return (c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
  }
  return 0;
}

std::vector<int64_t> tensor_shape(const TensorSpec& tensor, const ModelConfig& config) {
  std::vector<int64_t> shape;
  for (Dim dim : tensor.shape) shape.push_back(dimension(dim, config));
  return shape;
}

bool tensor_present(const TensorSpec& tensor, const ModelConfig& config) {
  switch (tensor.presence) {
    case Presence::Always: return true;
    case Presence::Untied: return !config.tie_word_embeddings;
    case Presence::AttentionBias: return config.attention_bias;
    case Presence::MlpBias: return config.mlp_bias;
  }
  return true;
}

bool is_per_layer(const TensorSpec& tensor) { return tensor.pattern.find("{i}") != std::string::npos; }

std::string tensor_name(const TensorSpec& tensor, int64_t layer) {
  const size_t at = tensor.pattern.find("{i}");
  if (at == std::string::npos) return tensor.pattern;
  return tensor.pattern.substr(0, at) + std::to_string(layer) + tensor.pattern.substr(at + 3);
}

}  // namespace rc
