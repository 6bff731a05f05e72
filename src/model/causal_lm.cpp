#include "rome_collapse/model/causal_lm.h"

#include <algorithm>
#include <cstdlib>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

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

at::Tensor CausalLM::rewrite_with_intervention(int64_t layer, const at::Tensor& key, const Intervention& intervention,
                                               ForwardOutput& out) const {
  at::Tensor output = at::linear(key, rewrite_weight(layer), rewrite_bias(layer));  // [B, T, D]
  if (intervention.layer != layer) return output;
  auto index_of = [&](const std::vector<TokenPosition>& pairs) {
    std::vector<int64_t> rows, positions;
    for (const auto& p : pairs) {
      rows.push_back(p.row);
      positions.push_back(p.position);
    }
    auto opts = at::TensorOptions().dtype(at::kLong);
    return std::make_pair(at::tensor(rows, opts).to(key.device()), at::tensor(positions, opts).to(key.device()));
  };
  if (!intervention.capture_at.empty()) {
    auto [rows, positions] = index_of(intervention.capture_at);
    out.captured_keys = key.index({rows, positions});         // [N, F]
    out.captured_outputs = output.index({rows, positions});   // [N, D]
  }
  if (intervention.delta.defined() && !intervention.delta_at.empty()) {
    // A 0/1 mask times delta keeps the addition differentiable w.r.t. delta without in-place writes.
    at::Tensor mask = at::zeros({output.size(0), output.size(1), 1}, output.options().requires_grad(false));
    for (const auto& p : intervention.delta_at) mask[p.row][p.position][0] = 1.0;
    output = output + mask * intervention.delta.to(output.scalar_type());
  }
  return output;
}

ForwardOutput CausalLM::forward(const at::Tensor& ids, const ForwardOptions& options) const {
  ForwardOutput out;
  const int64_t seq_len = ids.size(1);
  if (options.position_offset + seq_len > config_.max_positions)
    throw InputError(source_ + ": sequence of " + std::to_string(seq_len) + " tokens (position offset " +
                     std::to_string(options.position_offset) + ") exceeds the model's context of " +
                     std::to_string(config_.max_positions) + " positions");
  at::Tensor positions =
      at::arange(options.position_offset, options.position_offset + seq_len, ids.options().dtype(at::kLong));
  at::Tensor hidden;  // [B, T, D]
  if (options.start_layer > 0) {
    TORCH_CHECK(options.initial_hidden.defined(), "start_layer > 0 needs initial_hidden");
    hidden = options.initial_hidden;
  } else {
    hidden = embed(ids, positions);
  }
  for (int64_t layer = options.start_layer; layer < config_.n_layers; ++layer) {
    if (layer == options.keep_hidden_entering) out.hidden_entering = hidden;
    hidden = block(layer, hidden, positions, options.intervention, out);
    if (layer == options.stop_after_layer) return out;
    if (layer == options.logits_after_layer) break;
  }
  if (!options.compute_logits) return out;
  if (!options.logits_at.empty()) {
    std::vector<int64_t> rows, cols;
    for (const auto& p : options.logits_at) {
      rows.push_back(p.row);
      cols.push_back(p.position);
    }
    auto opts = at::TensorOptions().dtype(at::kLong).device(hidden.device());
    hidden = hidden.index({at::tensor(rows, at::kLong).to(opts), at::tensor(cols, at::kLong).to(opts)});  // [N, D]
  }
  out.logits = lm_head(final_norm(hidden));
  return out;
}

std::unique_ptr<CausalLM> load_causal_lm(const std::filesystem::path& path, const LoadOptions& options) {
  return build_causal_lm(load_checkpoint(path, at::kFloat), options);
}

std::unique_ptr<CausalLM> build_causal_lm(Checkpoint checkpoint, const LoadOptions& options) {
  validate_checkpoint(checkpoint);
  switch (checkpoint.config.arch) {
    case Architecture::GPT2: return detail::make_gpt2(std::move(checkpoint), options);
    case Architecture::GPTJ: return detail::make_gptj(std::move(checkpoint), options);
    case Architecture::Llama: return detail::make_llama(std::move(checkpoint), options);
  }
  fail_input(checkpoint.source, "unsupported architecture");
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
