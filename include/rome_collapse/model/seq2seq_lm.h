#pragma once
// Encoder-decoder language models (T5 v1.0, v1.1 and Flan-T5) beside the causal ones.
//
// Legend: B = batch rows, S = encoder length, T = decoder length (both right-padded), D = d_model,
// F = MLP inner size (d_ff), V = vocabulary, N = number of (row, position) pairs.
//
// What the paper's Experiment 5 needs, passed explicitly like CausalLM's interventions: capture
// the MLP "key" — the input of DenseReluDense.wo (relu(wi x), or act(wi_0 x) * wi_1 x in the gated
// form) — and wo's output at chosen (row, position) pairs of one layer of one stack, and stop
// after that encoder layer. The rewrite weight wo is [D, F] (out, in) as for the causal models.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/model/causal_lm.h"

namespace rc {

// config.json of a T5 folder, with transformers' T5Config defaults for absent fields (t5-3b's
// file leaves out feed_forward_proj, tie_word_embeddings, num_decoder_layers, max distance).
struct T5Config {
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t d_kv = 0;                 // per-head size; inner width n_heads * d_kv may differ from d_model
  int64_t d_ff = 0;
  int64_t n_heads = 0;
  int64_t encoder_layers = 0;       // num_layers
  int64_t decoder_layers = 0;       // num_decoder_layers (default num_layers)
  int64_t num_buckets = 32;         // relative_attention_num_buckets
  int64_t max_distance = 128;       // relative_attention_max_distance
  double norm_eps = 1e-6;           // layer_norm_epsilon
  std::string feed_forward_proj = "relu";
  std::string activation = "relu";  // "relu", "gelu" (erf), "gelu_new" (tanh), "silu"
  bool gated = false;               // "gated-*": wi_0 / wi_1
  bool tie_word_embeddings = true;  // tied: decoder output x d_model^-0.5 before the shared head
  int64_t decoder_start_token_id = 0;
  int64_t pad_token_id = 0;
  int64_t eos_token_id = 1;
  int64_t inner_dim() const { return n_heads * d_kv; }
};

// InputError naming the file and field (an unknown feed_forward_proj names its value).
T5Config parse_t5_config(const nlohmann::json& json, const std::string& file_for_errors);
// Whether `path` (a folder, or a file inside one) holds a config.json whose model_type is "t5".
bool is_t5_folder(const std::filesystem::path& path);

// T5's relative position bucket of relative_position = key index - query index, exactly as
// transformers' T5Attention._relative_position_bucket computes it (float32 logarithms).
at::Tensor t5_relative_position_bucket(const at::Tensor& relative_position, bool bidirectional, int64_t num_buckets,
                                       int64_t max_distance);

enum class Stack { Encoder, Decoder };
std::string to_string(Stack stack);

struct Seq2SeqIntervention {
  Stack stack = Stack::Encoder;
  int64_t layer = -1;                     // block whose MLP is captured; -1: none
  std::vector<TokenPosition> capture_at;  // positions of that stack's input (encoder ids or decoder ids)
};

struct Seq2SeqForwardOptions {
  Seq2SeqIntervention intervention;
  int64_t stop_after_encoder_layer = -1;  // >= 0: return after this encoder block (no decoder, no logits)
};

struct Seq2SeqOutput {
  at::Tensor encoder_hidden;    // [B, S, D] after encoder.final_layer_norm (undefined when stopped early)
  at::Tensor logits;            // [B, T, V] (undefined without decoder ids)
  at::Tensor captured_keys;     // [N, F] wo inputs, in capture_at order
  at::Tensor captured_outputs;  // [N, D] wo outputs (before the residual add)
};

class Seq2SeqLM {
 public:
  virtual ~Seq2SeqLM() = default;

  const T5Config& config() const { return config_; }
  c10::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  const std::string& source() const { return source_; }
  virtual std::string architecture() const = 0;  // "T5 v1.0 (relu)", ...

  // input_ids, attention_mask: [B, S] (mask 1 for real tokens, 0 for padding; undefined: all real);
  // decoder_ids: [B, T] (teacher forcing; undefined: encoder only).
  virtual Seq2SeqOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                const at::Tensor& decoder_ids, const Seq2SeqForwardOptions& options = {}) const = 0;

  // The rewrite module DenseReluDense.wo of `layer` in `stack`: [D, F], and its Hugging Face name.
  virtual at::Tensor rewrite_weight(Stack stack, int64_t layer) const = 0;
  virtual std::string rewrite_weight_name(Stack stack, int64_t layer) const = 0;

 protected:
  Seq2SeqLM(T5Config config, std::string source, c10::Device device, at::ScalarType dtype)
      : config_(std::move(config)), source_(std::move(source)), device_(device), dtype_(dtype) {}
  T5Config config_;
  std::string source_;
  c10::Device device_;
  at::ScalarType dtype_;
};

// Loads a Hugging Face T5 folder (config.json and model.safetensors or a sharded index). Accepts
// the embedding under shared.weight, encoder.embed_tokens.weight or decoder.embed_tokens.weight;
// refuses a missing or misshaped tensor naming it (InputError).
std::unique_ptr<Seq2SeqLM> load_seq2seq_lm(const std::filesystem::path& path, const LoadOptions& options = {});
// Builds T5 from config and tensors already in memory (validated first); `keepalive` holds the
// memory maps the tensors may alias.
std::unique_ptr<Seq2SeqLM> build_t5(const T5Config& config, std::map<std::string, at::Tensor> tensors,
                                    const std::string& source, const LoadOptions& options = {},
                                    std::vector<std::shared_ptr<void>> keepalive = {});

}  // namespace rc
