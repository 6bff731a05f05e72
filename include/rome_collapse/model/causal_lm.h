#pragma once
// One causal-LM interface with every decoder family of architecture.h behind it.
//
// Legend: B = batch rows, T = sequence length (right-padded), D = d_model, F = MLP inner size
// (the rewrite module's input), V = vocabulary, N = number of (row, position) pairs.
//
// ROME needs three things from a forward pass, all passed explicitly (no global hooks):
//  - capture the rewrite module's input (the key) and output at chosen (row, position) pairs,
//  - add a vector delta to the MLP output of a layer at chosen (row, position) pairs,
//    differentiably with respect to delta,
//  - stop early, start late (from cached hidden states), or compute logits only where needed.
// The rewrite module is the MLP's output projection (GPT-2 mlp.c_proj, GPT-J mlp.fc_out, Llama /
// Qwen2 / Mistral mlp.down_proj, GPT-NeoX mlp.dense_4h_to_h, OPT fc2); its weight is held as [D, F] (out, in) for every architecture — GPT-2's Conv1D
// orientation is undone at load time and restored when saving.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "rome_collapse/model/checkpoint.h"
#include "rome_collapse/model/config.h"

namespace rc {

struct TokenPosition {
  int64_t row = 0;
  int64_t position = 0;
};

// (row, position) pairs as two int64 index tensors on the model's device, built once so that a
// loop of forward passes does no host-to-device work per step.
struct PositionIndex {
  at::Tensor rows, positions;  // [N], [N]
  bool defined() const { return rows.defined(); }
};
PositionIndex make_position_index(const std::vector<TokenPosition>& pairs, c10::Device device);

struct Intervention {
  int64_t layer = -1;                    // layer whose MLP is touched; -1: none
  std::vector<TokenPosition> capture_at;  // capture the rewrite module's input and output here
  at::Tensor delta;                       // [D], or [B, 1, D] (one per row: a group of ROME requests); added
                                          // to the MLP output at delta_at (may require grad)
  std::vector<TokenPosition> delta_at;
  at::Tensor delta_mask;                  // optional [B, T, 1] 0/1 mask of delta_at, precomputed
};
// The [B, T, 1] mask of the pairs, for Intervention::delta_mask.
at::Tensor make_position_mask(const std::vector<TokenPosition>& pairs, int64_t batch, int64_t length,
                              at::ScalarType dtype, c10::Device device);

// Keys and values of already-processed positions, per layer (rotary embeddings applied, before
// grouped-query expansion): [B, H_kv, T_cached, head_dim]. Generation appends to it token by
// token; ROME's optimisation keeps the positions before the subject, which δ cannot change.
struct KVCache {
  std::vector<at::Tensor> keys, values;  // index = layer; undefined for layers not cached
  int64_t length(int64_t layer) const {
    return layer < static_cast<int64_t>(keys.size()) && keys[layer].defined() ? keys[layer].size(2) : 0;
  }
};

// What one block exchanges with the cache.
struct LayerKV {
  at::Tensor past_keys, past_values;  // [B, H_kv, P, hd] or undefined
  at::Tensor attention_bias;          // [B or 1, 1, T, P + T] float32: 0 where attention may look, -inf where not
  bool record = false;                // fill keys/values with past + new
  at::Tensor keys, values;            // out
};

struct ForwardOptions {
  Intervention intervention;
  int64_t stop_after_layer = -1;          // >= 0: return after this layer (no logits)
  int64_t start_layer = 0;                // > 0: initial_hidden is the residual stream entering it
  at::Tensor initial_hidden;              // [B, T, D], with start_layer > 0
  int64_t keep_hidden_entering = -1;      // >= 0: return the residual stream entering this layer
  int64_t position_offset = 0;            // position ids start here instead of 0
  std::vector<TokenPosition> logits_at;   // non-empty: logits only at these pairs ([N, V])
  PositionIndex logits_index;             // the same, precomputed (takes precedence)
  int64_t logits_after_layer = -1;        // >= 0: logits from this layer's output (ROME's v_loss_layer)
  bool compute_logits = true;
  const KVCache* past = nullptr;          // ids continue after these cached positions
  KVCache* record = nullptr;              // receives every computed layer's keys/values (past + new)
  // Ragged rows (ROME's optimisation: each row recomputes from its own subject token on). Row r's
  // tokens sit at row_positions[r] and attend to the cached positions where past_valid[r] is true
  // (a row's cache is left-aligned: its own earlier positions, then positions it recomputes now).
  at::Tensor row_positions;               // [B, T] int64 position ids; default: P + 0..T-1 for every row
  at::Tensor past_valid;                  // [B, P] bool; default: every cached position
};

struct ForwardOutput {
  at::Tensor logits;            // [B, T, V], or [N, V] with logits_at; undefined when stopped early
  at::Tensor captured_keys;     // [N, F] rewrite-module inputs, in capture_at order
  at::Tensor captured_outputs;  // [N, D] rewrite-module outputs (bias included, before delta)
  at::Tensor hidden_entering;   // [B, T, D] residual stream entering keep_hidden_entering
  at::Tensor hidden_after_stop; // [B, T, D] residual stream leaving stop_after_layer
};

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // compute dtype
  c10::Device device = c10::Device(c10::kCPU);
};

class CausalLM {
 public:
  virtual ~CausalLM() = default;

  const ModelConfig& config() const { return config_; }
  c10::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  const std::string& source() const { return source_; }

  // ids: [B, T] int64, right-padded (padding only ever follows real tokens, so the causal mask
  // alone keeps it from influencing real positions).
  ForwardOutput forward(const at::Tensor& ids, const ForwardOptions& options = {}) const;

  // The rewrite module of `layer`: weight [D, F] and bias [D] (undefined for Llama).
  at::Tensor rewrite_weight(int64_t layer) const;
  at::Tensor rewrite_bias(int64_t layer) const;
  void set_rewrite_weight(int64_t layer, const at::Tensor& weight);  // [D, F]
  // Hugging Face name of the rewrite module's weight ("transformer.h.17.mlp.c_proj.weight").
  virtual std::string rewrite_weight_name(int64_t layer) const = 0;

  // Final norm and LM head applied to hidden states [..., D] (logits of an intermediate layer's output).
  at::Tensor logits_from_hidden(const at::Tensor& hidden) const { return lm_head(final_norm(hidden)); }

  // All weights under Hugging Face names and layouts (for --save-model).
  std::map<std::string, at::Tensor> hf_state_dict() const;
  // The Hugging Face names of its weights (no copies), e.g. to check module names a config gives.
  std::vector<std::string> weight_names() const;

 protected:
  CausalLM(Checkpoint checkpoint, LoadOptions options);

  // Architecture hooks. x: [B, T, D].
  virtual at::Tensor embed(const at::Tensor& ids, const at::Tensor& positions) const = 0;
  // One transformer block; calls mlp_with_intervention for the MLP part.
  virtual at::Tensor block(int64_t layer, const at::Tensor& x, const at::Tensor& positions,
                           const Intervention& intervention, ForwardOutput& out, LayerKV& kv) const = 0;
  virtual at::Tensor final_norm(const at::Tensor& x) const = 0;
  virtual at::Tensor lm_head(const at::Tensor& x) const = 0;

  // Rewrite module applied to `key` [B, T, F], with the capture and delta of the intervention.
  at::Tensor rewrite_with_intervention(int64_t layer, const at::Tensor& key, const Intervention& intervention,
                                       ForwardOutput& out) const;

  const at::Tensor& weight(const std::string& name) const;
  at::Tensor optional_weight(const std::string& name) const;

  ModelConfig config_;
  std::map<std::string, at::Tensor> weights_;  // HF names; GPT-2 Conv1D weights stored transposed
  std::vector<std::string> conv1d_names_;       // names to transpose back when saving
  std::string source_;
  std::vector<std::shared_ptr<void>> keepalive_;  // memory maps that weights may alias
  c10::Device device_;
  at::ScalarType dtype_;
};

// Loads a checkpoint (HF directory or llama2.c file) and builds the architecture it declares.
std::unique_ptr<CausalLM> load_causal_lm(const std::filesystem::path& path, const LoadOptions& options = {});
// Builds the architecture of an in-memory checkpoint (validated first).
std::unique_ptr<CausalLM> build_causal_lm(Checkpoint checkpoint, const LoadOptions& options = {});

// A checkpoint with seeded random weights in Hugging Face layout, initialised as transformers
// does (normal(0, 0.02) matrices, zero biases, unit norms), created on `device`: the embedded
// demo model and the benchmark models in the shapes of the paper's models.
Checkpoint random_checkpoint(const ModelConfig& config, uint64_t seed, c10::Device device = c10::Device(c10::kCPU));
// Shapes by name: "gpt2-tiny" (4 layers, d 64), "gpt2-small" (12, 768), "gpt2-xl" (48, 1600),
// "gptj-6b" (28, 4096), "llama2-7b" (32, 4096), "llama3-8b" (32, 4096, GQA 8), "qwen2.5-7b"
// (28, 3584, GQA 4), "mistral-7b" (32, 4096, GQA 8, window 4096), "pythia-6.9b" (32, 4096);
// vocab_size defaults to the real model's.
ModelConfig model_shape(const std::string& name, std::optional<int64_t> vocab_size = std::nullopt);
const std::vector<std::string>& model_shape_names();

// Waits for the work queued on `device` (a no-op on the CPU): timings of CUDA work must not stop
// the clock before the kernels have run.
void synchronize(c10::Device device);

// Right-pads token sequences with pad_id into [B, T] int64.
at::Tensor pad_batch(const std::vector<std::vector<int64_t>>& sequences, int64_t pad_id, c10::Device device);

// Sets libtorch's intra-op threads from the hardware (libtorch starts with one here), or to one
// for a small model; $ROME_THREADS overrides.
void configure_threads(const ModelConfig* model = nullptr);

}  // namespace rc
