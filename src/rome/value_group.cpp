#include "rome_collapse/rome/value_group.h"

#include <algorithm>
#include <cmath>
#include <string>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include "rome_collapse/rome/adam.h"
#include "rome_collapse/util/error.h"
#include "value_window.h"

namespace rc {

namespace {

using namespace value_detail;

// The requests' rows as one batch, right-padded to the longest: padding only ever follows a row's
// real tokens, so the causal mask keeps it from them (any id will do; 0 is in every vocabulary).
ValueBatch concatenate_rows(const std::vector<ValueBatch>& batches, std::vector<int64_t>& row_offsets) {
  int64_t length = 0;
  for (const auto& batch : batches) length = std::max(length, batch.ids.size(1));
  ValueBatch rows;
  std::vector<at::Tensor> padded;
  row_offsets.assign(1, 0);
  for (const auto& batch : batches) {
    if (batch.ids.dim() != 2 || batch.ids.size(0) != static_cast<int64_t>(batch.subject_last.size()) ||
        batch.lengths.size() != batch.subject_last.size())
      throw InputError("rewrite_layer_inputs: request " + std::to_string(padded.size()) +
                       " of the group: its ids, lengths and subject positions disagree on the number of rows");
    padded.push_back(at::constant_pad_nd(batch.ids, {0, length - batch.ids.size(1)}, 0));
    rows.lengths.insert(rows.lengths.end(), batch.lengths.begin(), batch.lengths.end());
    rows.subject_last.insert(rows.subject_last.end(), batch.subject_last.begin(), batch.subject_last.end());
    rows.keys_match_template_encoding = rows.keys_match_template_encoding && batch.keys_match_template_encoding;
    row_offsets.push_back(row_offsets.back() + batch.ids.size(0));
  }
  rows.ids = at::cat(padded, 0);
  return rows;
}

// Rows of a layer input (hidden states entering L and the cache of layers >= L); all of them
// without a copy.
RewriteLayerInput select_rows(const RewriteLayerInput& all, const at::Tensor& rows, int64_t layer, bool every_row) {
  if (every_row) return all;
  RewriteLayerInput part;
  part.hidden_entering = all.hidden_entering.index_select(0, rows);
  part.cache.keys.resize(all.cache.keys.size());
  part.cache.values.resize(all.cache.values.size());
  for (size_t l = static_cast<size_t>(std::max<int64_t>(layer, 0)); l < all.cache.keys.size(); ++l) {
    if (!all.cache.keys[l].defined()) continue;
    part.cache.keys[l] = all.cache.keys[l].index_select(0, rows);
    part.cache.values[l] = all.cache.values[l].index_select(0, rows);
  }
  return part;
}

std::string request_label(size_t request) { return "request " + std::to_string(request) + " of the group: "; }

// The optimisation of the group's δ [A, D] (A: the requests still running, in the group's order).
// All running requests have taken the same number of steps, so one AdamState (its moments [A, D],
// one step count) is each one's own Adam; a request that stops leaves δ, the moments and the pass.
class GroupOptimizer {
 public:
  GroupOptimizer(const CausalLM& model, const std::vector<ValueBatch>& batches, const GroupedLayerInput& input,
                 const RomeHparams& hparams);
  std::vector<ValueOptimization> run();

 private:
  void build_pass();
  std::vector<ValueLoss> losses_at_delta();
  std::vector<bool> record(const std::vector<ValueLoss>& losses, int64_t it);
  void stop(size_t active_index);
  at::Tensor gradients(const at::Tensor& total, const std::vector<int64_t>& keep);
  void step(const at::Tensor& grad, const std::vector<int64_t>& keep);

  const CausalLM& model_;
  const std::vector<ValueBatch>& batches_;
  const GroupedLayerInput& input_;
  const RomeHparams& hparams_;
  const bool loss_at_last_layer_;
  std::vector<ValueOptimization> results_;   // per request
  std::vector<at::Tensor> target_init_norm_;  // per request, float32 scalars
  std::vector<at::Tensor> kl_init_;          // per request: [V] log P_init at its KL position
  std::vector<int64_t> active_;              // the requests still running
  at::Tensor delta_;                         // [A, D]
  at::Tensor row_delta_;                     // [rows, 1, D]: δ of each row's request, a leaf of its own
  at::Tensor max_norm_;                      // [A]
  AdamState adam_;
  // The window pass over the running requests' rows.
  ForwardPass pass_;
  at::Tensor labels_;                   // the running requests' target labels, request after request
  std::vector<int64_t> target_counts_;  // R·|t| per running request
  std::vector<int64_t> first_rows_;     // per running request: its first row in the pass
  at::Tensor row_request_;              // [rows]: each row's index into active_ (which δ it gets)
};

GroupOptimizer::GroupOptimizer(const CausalLM& model, const std::vector<ValueBatch>& batches,
                               const GroupedLayerInput& input, const RomeHparams& hparams)
    : model_(model), batches_(batches), input_(input), hparams_(hparams),
      loss_at_last_layer_(hparams.v_loss_layer == model.config().n_layers - 1) {
  const size_t n_requests = batches.size();
  if (input.requests.size() != n_requests || input.row_offsets.size() != n_requests + 1)
    throw InputError("optimize_values: " + std::to_string(n_requests) + " batches but a layer input of " +
                     std::to_string(input.requests.size()) + " requests");
  if (input.layer != hparams.layer)
    throw InputError("optimize_values: the layer input was computed at layer " + std::to_string(input.layer) +
                     ", the hparams edit layer " + std::to_string(hparams.layer));
  results_.resize(n_requests);
  kl_init_.resize(n_requests);
  std::vector<at::Tensor> max_norms;
  for (size_t g = 0; g < n_requests; ++g) {
    results_[g].target_init = input.requests[g].outputs[0].detach().to(at::kFloat).clone();  // bare prompt
    target_init_norm_.push_back(results_[g].target_init.norm());
    max_norms.push_back(hparams.clamp_norm_factor * target_init_norm_.back());
    active_.push_back(static_cast<int64_t>(g));
  }
  max_norm_ = at::stack(max_norms);
  const auto options = at::TensorOptions().dtype(at::kFloat).device(model.device());
  delta_ = at::zeros({static_cast<int64_t>(n_requests), model.config().d_model}, options).requires_grad_(true);
  adam_.lr = hparams.v_lr;
  build_pass();
}

// One ragged window pass over the running requests' rows (window_pass on their rows, picked out
// of the group's pass up to L): their targets one request after another, then their KL rows.
void GroupOptimizer::build_pass() {
  const auto device = model_.device();
  std::vector<int64_t> rows, row_request, kl_rows;
  ValueBatch active;
  TargetTokens targets;
  std::vector<at::Tensor> labels;
  target_counts_.clear();
  first_rows_.clear();
  for (size_t a = 0; a < active_.size(); ++a) {
    const int64_t g = active_[a], first_row = static_cast<int64_t>(rows.size());
    const ValueBatch& batch = batches_[g];
    const TargetTokens own = target_tokens(batch, device);  // positions of the request's own batch = of its rows here
    for (const auto& tp : own.positions) targets.positions.push_back({first_row + tp.row, tp.position});
    labels.push_back(own.labels);
    target_counts_.push_back(own.labels.size(0));
    kl_rows.push_back(first_row + batch.rewriting_rows);
    first_rows_.push_back(first_row);
    for (int64_t r = input_.row_offsets[g]; r < input_.row_offsets[g + 1]; ++r) {
      rows.push_back(r);
      row_request.push_back(static_cast<int64_t>(a));
      active.lengths.push_back(input_.rows.lengths[r]);
      active.subject_last.push_back(input_.rows.subject_last[r]);
    }
  }
  targets.labels = at::cat(labels);
  const at::Tensor row_index = at::tensor(rows, at::kLong).to(device);
  const bool every_row = static_cast<int64_t>(rows.size()) == input_.rows.ids.size(0);
  active.ids = every_row ? input_.rows.ids : input_.rows.ids.index_select(0, row_index);
  const RewriteLayerInput layer_input = select_rows(input_.merged, row_index, hparams_.layer, every_row);
  pass_ = window_pass(active, layer_input, targets, hparams_, loss_at_last_layer_, device, kl_rows);
  labels_ = targets.labels;
  row_request_ = at::tensor(row_request, at::kLong).to(device);
}

// Each running request's loss at its δ (value_loss on its own targets and KL row, `total` keeping
// the autograd graph to δ); the first call sets each one's P_init.
std::vector<ValueLoss> GroupOptimizer::losses_at_delta() {
  row_delta_ = delta_.detach().index_select(0, row_request_).unsqueeze(1).requires_grad_(true);
  pass_.options.intervention.delta = row_delta_;
  ForwardOutput out = model_.forward(pass_.ids, pass_.options);
  const int64_t n_active = static_cast<int64_t>(active_.size()), n_targets = labels_.size(0);
  const at::Tensor target_logits =
      loss_at_last_layer_ ? out.logits.slice(0, 0, n_targets)
                          : model_.logits_from_hidden(
                                out.hidden_entering.index({pass_.hidden_targets.rows, pass_.hidden_targets.positions}));
  const at::Tensor kl_logits = out.logits.slice(0, out.logits.size(0) - n_active);  // [A, V]
  std::vector<ValueLoss> losses;
  int64_t first = 0;
  for (int64_t a = 0; a < n_active; ++a) {
    const int64_t g = active_[a], count = target_counts_[a];
    losses.push_back(value_loss(target_logits.slice(0, first, first + count), labels_.slice(0, first, first + count),
                                kl_logits[a], kl_init_[g], delta_[a], target_init_norm_[g], hparams_));
    if (!kl_init_[g].defined()) kl_init_[g] = losses.back().kl_log_probs.clone();
    first += count;
  }
  return losses;
}

// Records each running request's terms (one host sync for all); true where a request stops now,
// exactly where optimize_value would stop it: loss < early_stop_loss, or the last iteration.
std::vector<bool> GroupOptimizer::record(const std::vector<ValueLoss>& losses, int64_t it) {
  std::vector<at::Tensor> terms;
  for (const auto& loss : losses) terms.push_back(loss.terms());
  const at::Tensor values = at::stack(terms).to(at::kDouble).cpu().contiguous();  // [A, 4]
  const auto value = values.accessor<double, 2>();
  const bool last = it == hparams_.v_num_grad_steps - 1;
  std::vector<bool> stops;
  for (size_t a = 0; a < active_.size(); ++a) {
    ValueOptimization& result = results_[active_[a]];
    const int64_t row = static_cast<int64_t>(a);
    result.loss.push_back(value[row][0]);
    result.nll.push_back(value[row][1]);
    result.kl.push_back(value[row][2]);
    result.weight_decay.push_back(value[row][3]);
    result.iterations = it + 1;
    if (!std::isfinite(value[row][0]))
      throw NumericError(request_label(active_[a]) + non_finite_loss_message(value[row][0], it));
    stops.push_back(value[row][0] < hparams_.early_stop_loss || last);
  }
  return stops;
}

// A request's result at its current δ (it takes no further step).
void GroupOptimizer::stop(size_t active_index) {
  const int64_t g = active_[active_index];
  ValueOptimization& result = results_[g];
  result.adam_steps = adam_.step;  // every running request has taken each step so far
  result.delta = delta_[static_cast<int64_t>(active_index)].detach().clone();
  result.v_star = result.target_init + result.delta;
  if (!at::isfinite(result.v_star).all().item<bool>())
    throw NumericError(request_label(g) + "v* optimisation: v* is not finite");
}

// The kept requests' gradients [K, D]. The rows' part is reduced as optimize_value's autograd
// reduces its broadcast δ (a sum over the request's [R + 1, W, D] window grid, zero off the subject
// position, in the model's dtype), and the weight decay's part added to it, so that a request's
// gradient is bit for bit the one it gets alone: Adam divides by √v, and rounding-level differences
// in gradients near zero would otherwise grow into visible ones in δ over the iterations.
at::Tensor GroupOptimizer::gradients(const at::Tensor& total, const std::vector<int64_t>& keep) {
  const auto grads = torch::autograd::grad({total}, {row_delta_, delta_}, {}, /*retain_graph=*/false,
                                           /*create_graph=*/false, /*allow_unused=*/true);
  at::NoGradGuard no_grad;
  const at::Tensor row_grads = grads[0].squeeze(1).to(model_.dtype());  // [rows, D]
  std::vector<at::Tensor> kept;
  for (int64_t a : keep) {
    const ValueBatch& batch = batches_[active_[a]];
    const int64_t n_rows = static_cast<int64_t>(batch.subject_last.size());
    at::Tensor grid = at::zeros({n_rows, recompute_window(batch), row_grads.size(1)}, row_grads.options());
    grid.select(1, 0).copy_(row_grads.slice(0, first_rows_[a], first_rows_[a] + n_rows));
    at::Tensor grad = grid.sum(at::IntArrayRef{0, 1}, /*keepdim=*/true).view({row_grads.size(1)}).to(at::kFloat);
    kept.push_back(grads[1].defined() ? grad + grads[1][a] : grad);
  }
  return at::stack(kept);
}

// One Adam step and the clamp for the requests that go on (`keep`: their indices into active_,
// `grad` [K, D] their gradients); the others leave δ, the moments and the pass first.
void GroupOptimizer::step(const at::Tensor& grad, const std::vector<int64_t>& keep) {
  at::NoGradGuard no_grad;
  if (keep.size() < active_.size()) {
    const at::Tensor keep_index = at::tensor(keep, at::kLong).to(model_.device());
    delta_ = delta_.detach().index_select(0, keep_index);
    max_norm_ = max_norm_.index_select(0, keep_index);
    if (adam_.exp_avg.defined()) {
      adam_.exp_avg = adam_.exp_avg.index_select(0, keep_index);
      adam_.exp_avg_sq = adam_.exp_avg_sq.index_select(0, keep_index);
    }
    std::vector<int64_t> still_active;
    for (int64_t a : keep) still_active.push_back(active_[a]);
    active_ = std::move(still_active);
    build_pass();
  }
  adam_.update(delta_, grad);
  clamp_delta(delta_, max_norm_);
  delta_.requires_grad_(true);
}

std::vector<ValueOptimization> GroupOptimizer::run() {
  for (int64_t it = 0; it < hparams_.v_num_grad_steps && !active_.empty(); ++it) {
    const std::vector<ValueLoss> losses = losses_at_delta();
    const std::vector<bool> stops = record(losses, it);
    std::vector<int64_t> keep;
    at::Tensor total;  // the running requests' summed loss: each δ row's gradient is its own request's
    for (size_t a = 0; a < active_.size(); ++a) {
      if (stops[a]) {
        stop(a);
        continue;
      }
      keep.push_back(static_cast<int64_t>(a));
      total = total.defined() ? total + losses[a].total : losses[a].total;
    }
    if (keep.empty()) {
      active_.clear();
      break;
    }
    step(gradients(total, keep), keep);
  }
  for (size_t a = 0; a < active_.size(); ++a) stop(a);  // only without iterations (v_num_grad_steps <= 0)
  return std::move(results_);
}

}  // namespace

GroupedLayerInput rewrite_layer_inputs(const CausalLM& model, const std::vector<ValueBatch>& batches, int64_t layer) {
  GroupedLayerInput input;
  input.layer = layer;
  if (batches.empty()) return input;
  input.rows = concatenate_rows(batches, input.row_offsets);
  input.merged = rewrite_layer_input(model, input.rows, layer, /*record_cache=*/true);
  for (size_t g = 0; g < batches.size(); ++g) {
    RewriteLayerInput request;
    request.keys = input.merged.keys.slice(0, input.row_offsets[g], input.row_offsets[g + 1]);
    request.outputs = input.merged.outputs.slice(0, input.row_offsets[g], input.row_offsets[g + 1]);
    input.requests.push_back(std::move(request));
  }
  return input;
}

std::vector<ValueOptimization> optimize_values(const CausalLM& model, const std::vector<ValueBatch>& batches,
                                               const GroupedLayerInput& input, const RomeHparams& hparams) {
  if (batches.empty()) return {};
  return GroupOptimizer(model, batches, input, hparams).run();
}

}  // namespace rc
