#include "rome_collapse/model/causal_lm.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include "architectures.h"
#include "rome_collapse/model/checkpoint.h"
#include "rome_collapse/util/error.h"

namespace rc {

CausalLM::CausalLM(Checkpoint checkpoint, LoadOptions options)
    : config_(std::move(checkpoint.config)),
      weights_(std::move(checkpoint.tensors)),
      source_(std::move(checkpoint.source)),
      keepalive_(std::move(checkpoint.keepalive)),
      device_(options.device),
      dtype_(options.dtype) {
  for (auto& [name, tensor] : weights_) tensor = tensor.to(device_, dtype_);
}

const at::Tensor& CausalLM::weight(const std::string& name) const {
  auto it = weights_.find(name);
  if (it == weights_.end()) fail_input(source_, "missing tensor '" + name + "'");
  return it->second;
}

at::Tensor CausalLM::optional_weight(const std::string& name) const {
  auto it = weights_.find(name);
  return it == weights_.end() ? at::Tensor() : it->second;
}

at::Tensor CausalLM::rewrite_weight(int64_t layer) const { return weight(rewrite_weight_name(layer)); }

at::Tensor CausalLM::rewrite_bias(int64_t layer) const {
  std::string name = rewrite_weight_name(layer);
  return optional_weight(name.substr(0, name.size() - std::string("weight").size()) + "bias");
}

void CausalLM::set_rewrite_weight(int64_t layer, const at::Tensor& new_weight) {
  at::Tensor& stored = weights_.at(rewrite_weight_name(layer));
  TORCH_CHECK(new_weight.sizes() == stored.sizes(), "rewrite weight shape mismatch");
  stored = new_weight.to(device_, dtype_).contiguous();
}

std::map<std::string, at::Tensor> CausalLM::hf_state_dict() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, tensor] : weights_) {
    bool conv1d = std::find(conv1d_names_.begin(), conv1d_names_.end(), name) != conv1d_names_.end();
    out[name] = (conv1d ? tensor.t() : tensor).contiguous().cpu();
  }
  return out;
}

std::vector<std::string> CausalLM::weight_names() const {
  std::vector<std::string> names;
  for (const auto& item : weights_) names.push_back(item.first);
  return names;
}

PositionIndex make_position_index(const std::vector<TokenPosition>& pairs, c10::Device device) {
  std::vector<int64_t> rows, positions;
  rows.reserve(pairs.size());
  positions.reserve(pairs.size());
  for (const auto& p : pairs) {
    rows.push_back(p.row);
    positions.push_back(p.position);
  }
  return {at::tensor(rows, at::kLong).to(device), at::tensor(positions, at::kLong).to(device)};
}

at::Tensor make_position_mask(const std::vector<TokenPosition>& pairs, int64_t batch, int64_t length,
                              at::ScalarType dtype, c10::Device device) {
  at::Tensor mask = at::zeros({batch, length, 1}, at::TensorOptions().dtype(dtype));
  auto accessor = mask.accessor<float, 3>();
  for (const auto& p : pairs) accessor[p.row][p.position][0] = 1.0f;
  return mask.to(device);
}

at::Tensor CausalLM::rewrite_with_intervention(int64_t layer, const at::Tensor& key, const Intervention& intervention,
                                               ForwardOutput& out) const {
  at::Tensor output = at::linear(key, rewrite_weight(layer), rewrite_bias(layer));  // [B, T, D]
  if (intervention.layer != layer) return output;
  if (!intervention.capture_at.empty()) {
    PositionIndex index = make_position_index(intervention.capture_at, key.device());
    out.captured_keys = key.index({index.rows, index.positions});         // [N, F]
    out.captured_outputs = output.index({index.rows, index.positions});   // [N, D]
  }
  if (intervention.delta.defined() && (!intervention.delta_at.empty() || intervention.delta_mask.defined())) {
    // A 0/1 mask times delta keeps the addition differentiable w.r.t. delta without in-place writes.
    at::Tensor mask = intervention.delta_mask.defined()
                          ? intervention.delta_mask
                          : make_position_mask(intervention.delta_at, output.size(0), output.size(1), at::kFloat,
                                               output.device());
    output = output + mask.to(output.scalar_type()) * intervention.delta.to(output.scalar_type());
  }
  return output;
}

namespace {

// The attention masks as additive float32 biases [1 or B, 1, T, P + T] (0 where a query may look,
// -inf where not), built once per forward pass for all layers.
struct AttentionBiases {
  at::Tensor full;      // causal; with ragged caches (past_valid) a row also skips cached positions not its own
  at::Tensor windowed;  // the same, also blocking keys sliding_window or more positions back; undefined without window
};

at::Tensor as_bias(const at::Tensor& blocked) {
  return at::zeros(blocked.sizes(), blocked.options().dtype(at::kFloat))
      .masked_fill_(blocked, -std::numeric_limits<float>::infinity());
}

AttentionBiases attention_biases(const ModelConfig& config, const at::Tensor& ids, const at::Tensor& positions,
                                 int64_t past_length, const ForwardOptions& options) {
  const int64_t seq_len = ids.size(1), batch = ids.size(0);
  // Query i sits at position P + i.
  at::Tensor blocked = at::ones({seq_len, past_length + seq_len}, ids.options().dtype(at::kBool))
                           .triu(past_length + 1)
                           .view({1, 1, seq_len, past_length + seq_len});  // true = masked
  if (options.past_valid.defined()) {
    TORCH_CHECK(options.past_valid.size(1) == past_length, "forward: past_valid covers ", options.past_valid.size(1),
                " cached positions, the cache has ", past_length);
    at::Tensor invalid = at::cat({options.past_valid.logical_not(), at::zeros({batch, seq_len}, blocked.options())}, 1);
    blocked = blocked.logical_or(invalid.view({batch, 1, 1, past_length + seq_len}));  // [B, 1, T, P + T]
  }
  AttentionBiases biases{as_bias(blocked), at::Tensor()};
  if (config.sliding_window <= 0) return biases;
  // Key positions: cached position p sits at cache index p (ragged rows keep their own earlier
  // positions left-aligned), new keys at the queries' positions.
  at::Tensor key_positions;
  if (positions.dim() == 1) {
    key_positions = at::cat({at::arange(options.position_offset, options.position_offset + past_length,
                                        positions.options()),
                             positions});                                                       // [P + T]
  } else {
    key_positions = at::cat({at::arange(past_length, positions.options()).expand({batch, past_length}),
                             positions}, 1);                                                    // [B, P + T]
  }
  at::Tensor distance = positions.unsqueeze(-1) - key_positions.unsqueeze(-2);  // [T or B x T, P + T]
  at::Tensor outside = distance.ge(config.sliding_window).view({positions.dim() == 1 ? 1 : batch, 1, seq_len,
                                                                past_length + seq_len});
  biases.windowed = as_bias(blocked.logical_or(outside));
  return biases;
}

}  // namespace

ForwardOutput CausalLM::forward(const at::Tensor& ids, const ForwardOptions& options) const {
  ForwardOutput out;
  const int64_t seq_len = ids.size(1);
  const int64_t past_length = options.past ? options.past->length(options.start_layer) : 0;
  // Explicit per-row positions were placed by the caller inside the rows it was given.
  if (!options.row_positions.defined() && options.position_offset + past_length + seq_len > config_.max_positions)
    throw InputError(source_ + ": sequence of " + std::to_string(seq_len) + " tokens (position offset " +
                     std::to_string(options.position_offset) + ") exceeds the model's context of " +
                     std::to_string(config_.max_positions) + " positions");
  const int64_t first_position = options.position_offset + past_length;
  at::Tensor positions = options.row_positions.defined()
                             ? options.row_positions
                             : at::arange(first_position, first_position + seq_len, ids.options().dtype(at::kLong));
  const AttentionBiases biases = attention_biases(config_, ids, positions, past_length, options);
  if (options.record) {
    options.record->keys.resize(config_.n_layers);
    options.record->values.resize(config_.n_layers);
  }
  at::Tensor hidden;  // [B, T, D]
  if (options.start_layer > 0) {
    TORCH_CHECK(options.initial_hidden.defined(), "start_layer > 0 needs initial_hidden");
    hidden = options.initial_hidden;
  } else {
    hidden = embed(ids, positions);
  }
  for (int64_t layer = options.start_layer; layer < config_.n_layers; ++layer) {
    if (layer == options.keep_hidden_entering) out.hidden_entering = hidden;
    LayerKV kv;
    if (options.past) {
      if (options.past->length(layer) != past_length)
        throw std::invalid_argument("forward: the KV cache does not cover layer " + std::to_string(layer));
      kv.past_keys = options.past->keys[layer];
      kv.past_values = options.past->values[layer];
    }
    kv.record = options.record != nullptr;
    kv.attention_bias = biases.windowed.defined() && layer >= config_.sliding_window_from_layer ? biases.windowed
                                                                                                : biases.full;
    hidden = block(layer, hidden, positions, options.intervention, out, kv);
    if (options.record) {
      options.record->keys[layer] = kv.keys;
      options.record->values[layer] = kv.values;
    }
    if (layer == options.stop_after_layer) {
      out.hidden_after_stop = hidden;
      return out;
    }
    if (layer == options.logits_after_layer) break;
  }
  if (!options.compute_logits) return out;
  if (options.logits_index.defined()) {
    hidden = hidden.index({options.logits_index.rows, options.logits_index.positions});  // [N, D]
  } else if (!options.logits_at.empty()) {
    PositionIndex index = make_position_index(options.logits_at, hidden.device());
    hidden = hidden.index({index.rows, index.positions});  // [N, D]
  }
  out.logits = lm_head(final_norm(hidden));
  return out;
}

std::unique_ptr<CausalLM> load_causal_lm(const std::filesystem::path& path, const LoadOptions& options) {
  return build_causal_lm(load_checkpoint(path, at::kFloat), options);
}

std::unique_ptr<CausalLM> build_causal_lm(Checkpoint checkpoint, const LoadOptions& options) {
  validate_checkpoint(checkpoint);
  return detail::make_decoder(std::move(checkpoint), options);
}

at::Tensor pad_batch(const std::vector<std::vector<int64_t>>& sequences, int64_t pad_id, c10::Device device) {
  size_t longest = 0;
  for (const auto& s : sequences) longest = std::max(longest, s.size());
  at::Tensor batch = at::full({static_cast<int64_t>(sequences.size()), static_cast<int64_t>(longest)}, pad_id,
                              at::TensorOptions().dtype(at::kLong));
  auto accessor = batch.accessor<int64_t, 2>();
  for (size_t row = 0; row < sequences.size(); ++row)
    for (size_t col = 0; col < sequences[row].size(); ++col) accessor[row][col] = sequences[row][col];
  return batch.to(device);
}

void synchronize(c10::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.has_index() ? device.index() : -1);
}

void configure_threads(const ModelConfig* model) {
  // ROME_THREADS overrides (e.g. 1 when several runs share a machine: OpenMP threads spin while
  // waiting, and oversubscribed cores then spend most of their time spinning).
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // A small model's matrices are too small to split: threads only add barrier waits.
  if (model && model->d_model * model->d_ff < (int64_t{1} << 20)) threads = 1;
  if (const char* env = std::getenv("ROME_THREADS")) threads = std::max(1, std::atoi(env));
  at::set_num_threads(threads);
}

}  // namespace rc
