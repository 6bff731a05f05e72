#include "rome_collapse/rome/value.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <ATen/core/grad_mode.h>

#include "rome_collapse/model/cuda_graph_step.h"
#include "rome_collapse/rome/adam.h"
#include "rome_collapse/rome/keys.h"
#include "rome_collapse/util/error.h"
#include "value_window.h"

namespace rc {

std::vector<int64_t> target_token_ids(const Tokenizer& tokenizer, bool add_bos, const std::string& target) {
  std::vector<int64_t> ids = tokenizer.encode(" " + target, add_bos);
  if (!ids.empty() && (ids[0] == tokenizer.bos_id() || ids[0] == tokenizer.unk_id())) ids.erase(ids.begin());
  if (ids.empty()) throw InputError("target \"" + target + "\" encodes to no tokens");
  return ids;
}

ValueBatch build_value_batch(const Tokenizer& tokenizer, bool add_bos, const EditRequest& request,
                             const std::vector<std::string>& templates, const std::string& kl_prompt, int64_t pad_id,
                             c10::Device device) {
  ValueBatch batch;
  batch.target_ids = target_token_ids(tokenizer, add_bos, request.target_new);
  const std::string target_prefix = tokenizer.decode(
      std::vector<int64_t>(batch.target_ids.begin(), batch.target_ids.end() - 1));  // decode(target[:-1])
  std::vector<std::vector<int64_t>> rows;
  for (const auto& context : templates) {
    const std::string with_placeholder = fill_placeholder(context, request.prompt) + target_prefix;
    const int64_t subject_last = subject_last_index(tokenizer, add_bos, with_placeholder, request.subject);
    std::vector<int64_t> ids = tokenizer.encode(fill_placeholder(with_placeholder, request.subject), add_bos);
    if (static_cast<int64_t>(ids.size()) < static_cast<int64_t>(batch.target_ids.size()) || subject_last >= int64_t(ids.size()))
      throw InputError("prompt \"" + with_placeholder + "\" is too short for its target");
    std::vector<int64_t> key_prompt =
        tokenizer.encode(fill_placeholder(fill_placeholder(context, request.prompt), request.subject), add_bos);
    for (int64_t j = 0; j <= subject_last; ++j)
      if (j >= int64_t(key_prompt.size()) || key_prompt[j] != ids[j]) batch.keys_match_template_encoding = false;
    batch.subject_last.push_back(subject_last);
    batch.lengths.push_back(static_cast<int64_t>(ids.size()));
    rows.push_back(std::move(ids));
  }
  batch.rewriting_rows = static_cast<int64_t>(rows.size());
  batch.subject_last.push_back(subject_last_index(tokenizer, add_bos, kl_prompt, request.subject));
  rows.push_back(tokenizer.encode(fill_placeholder(kl_prompt, request.subject), add_bos));
  batch.lengths.push_back(static_cast<int64_t>(rows.back().size()));
  batch.ids = pad_batch(rows, pad_id, device);
  return batch;
}

int64_t recompute_window(const ValueBatch& batch) {
  int64_t window = 0;
  for (size_t r = 0; r < batch.lengths.size(); ++r) window = std::max(window, batch.lengths[r] - batch.subject_last[r]);
  return window;
}

RewriteLayerInput rewrite_layer_input(const CausalLM& model, const ValueBatch& batch, int64_t layer, bool record_cache) {
  at::NoGradGuard no_grad;
  ForwardOptions options;
  options.intervention.layer = layer;
  for (size_t row = 0; row < batch.subject_last.size(); ++row)
    options.intervention.capture_at.push_back({static_cast<int64_t>(row), batch.subject_last[row]});
  options.keep_hidden_entering = layer;
  options.stop_after_layer = layer;
  RewriteLayerInput layer_input;
  if (record_cache) options.record = &layer_input.cache;
  ForwardOutput out = model.forward(batch.ids, options);
  for (int64_t l = 0; l < layer && l < static_cast<int64_t>(layer_input.cache.keys.size()); ++l)
    layer_input.cache.keys[l] = layer_input.cache.values[l] = at::Tensor();  // never read: layers below L are not rerun
  const int64_t past = *std::max_element(batch.subject_last.begin(), batch.subject_last.end());
  if (record_cache && past > 0 && layer + 1 < model.config().n_layers) {
    // Above L the optimisation reads back only positions before each row's subject token (it
    // recomputes the rest), so those layers run on the columns before the latest one alone.
    ForwardOptions upper;
    upper.start_layer = layer + 1;
    upper.initial_hidden = out.hidden_after_stop.slice(1, 0, past);
    upper.record = &layer_input.cache;
    upper.compute_logits = false;
    model.forward(batch.ids.slice(1, 0, past), upper);
  }
  layer_input.keys = out.captured_keys;
  layer_input.outputs = out.captured_outputs;
  layer_input.hidden_entering = out.hidden_entering;
  return layer_input;
}

ValueLoss value_loss(const at::Tensor& target_logits, const at::Tensor& labels, const at::Tensor& kl_logits,
                     const at::Tensor& kl_init, const at::Tensor& delta, const at::Tensor& target_init_norm,
                     const RomeHparams& hparams) {
  ValueLoss loss;
  at::Tensor target_log_probs = at::log_softmax(target_logits.to(at::kFloat), -1);  // [R*|t|, V]
  at::Tensor kl_log_probs = at::log_softmax(kl_logits.to(at::kFloat), -1);          // [V]
  loss.kl_log_probs = kl_log_probs.detach();
  const at::Tensor& reference = kl_init.defined() ? kl_init : loss.kl_log_probs;
  at::Tensor token_log_probs = target_log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1);  // [R*|t|]
  // Every row has |t| targets, so the mean over rows of per-row means is the sum over all of them / R|t|.
  loss.nll = -token_log_probs.sum() / double(labels.numel());
  loss.kl = hparams.kl_factor * (kl_log_probs.exp() * (kl_log_probs - reference)).sum();
  // Norms stay float32 tensors, as in the paper's code: the weight-decay gradient dominates the
  // optimisation of small models, and its float32 rounding is visible in v* at the 1e-3 level.
  loss.weight_decay = hparams.v_weight_decay * (delta.norm() / target_init_norm.pow(2));
  loss.total = loss.nll + loss.kl + loss.weight_decay;
  return loss;
}

at::Tensor ValueLoss::terms() const {
  return at::stack({total.detach(), nll.detach(), kl.detach(), weight_decay.detach()});
}

void clamp_delta(at::Tensor& delta, const at::Tensor& max_norm) {
  if (delta.dim() == 2) {  // a group's δ [G, D], max_norm [G]: each row by the same ops as one request's
    for (int64_t row = 0; row < delta.size(0); ++row) {
      at::Tensor row_delta = delta[row];
      clamp_delta(row_delta, max_norm[row]);
    }
    return;
  }
  delta.mul_(at::clamp_max(max_norm / delta.norm(), 1.0));
}

namespace value_detail {

TargetTokens target_tokens(const ValueBatch& batch, c10::Device device) {
  const int64_t n_targets = static_cast<int64_t>(batch.target_ids.size());
  TargetTokens targets;
  std::vector<int64_t> labels;
  for (int64_t r = 0; r < batch.rewriting_rows; ++r) {
    for (int64_t j = 0; j < n_targets; ++j) {
      targets.positions.push_back({r, batch.lengths[r] - n_targets + j});
      labels.push_back(batch.target_ids[j]);
    }
  }
  targets.labels = at::tensor(labels, at::kLong).to(device);
  return targets;
}

std::string non_finite_loss_message(double loss_value, int64_t iteration) {
  return "v* optimisation: the loss became " + std::to_string(loss_value) + " at iteration " +
         std::to_string(iteration) + " (check hparams such as v_lr and v_weight_decay, and the model's weights)";
}

// The paper's code: the whole padded batch through every layer, full logits everywhere.
static ForwardPass reference_pass(const ValueBatch& batch, const TargetTokens& targets, const RomeHparams& hparams,
                                  bool loss_at_last_layer, c10::Device device) {
  ForwardPass pass;
  pass.ids = batch.ids;
  pass.options.intervention.layer = hparams.layer;
  for (size_t row = 0; row < batch.subject_last.size(); ++row)
    pass.options.intervention.delta_at.push_back({static_cast<int64_t>(row), batch.subject_last[row]});
  pass.options.intervention.delta_mask = make_position_mask(pass.options.intervention.delta_at, batch.ids.size(0),
                                                            batch.ids.size(1), at::kFloat, device);
  if (!loss_at_last_layer) pass.options.keep_hidden_entering = hparams.v_loss_layer + 1;
  pass.targets = make_position_index(targets.positions, device);
  pass.kl = make_position_index({{batch.rewriting_rows, batch.subject_last[batch.rewriting_rows]}}, device);
  return pass;
}

// The ragged pass's cache: layers >= L of the unedited pass, positions before `past`, each row's
// valid only before its own subject token.
static void attach_past(ForwardPass& pass, const ValueBatch& batch, const RewriteLayerInput& layer_input,
                        int64_t layer, int64_t past, c10::Device device) {
  const int64_t n_rows = static_cast<int64_t>(batch.subject_last.size());
  std::vector<int64_t> past_valid;
  for (int64_t r = 0; r < n_rows; ++r)
    for (int64_t p = 0; p < past; ++p) past_valid.push_back(p < batch.subject_last[r] ? 1 : 0);
  pass.past = std::make_shared<KVCache>();
  pass.past->keys.resize(layer_input.cache.keys.size());
  pass.past->values.resize(layer_input.cache.values.size());
  for (size_t l = static_cast<size_t>(layer); l < layer_input.cache.keys.size(); ++l) {
    pass.past->keys[l] = layer_input.cache.keys[l].slice(2, 0, past);
    pass.past->values[l] = layer_input.cache.values[l].slice(2, 0, past);
  }
  pass.options.past = pass.past.get();
  pass.options.past_valid = at::tensor(past_valid, at::kLong).view({n_rows, past}).to(at::kBool).to(device);
}

// The fast path, ragged windows: row r recomputes only positions [subject_last_r, length_r), from
// its subject's last token (where δ enters) to its end; everything before is δ-free and comes from
// the unedited pass's KV cache. Rows differ in where their window starts (their templates'
// prefixes), so the windows are left-aligned into one [R + 1, W] pass with per-row positions, and
// each row's cache is masked from its own window's start on. One pass, the fewest recomputed tokens.
ForwardPass window_pass(const ValueBatch& batch, const RewriteLayerInput& layer_input, const TargetTokens& targets,
                        const RomeHparams& hparams, bool loss_at_last_layer, c10::Device device,
                        const std::vector<int64_t>& kl_rows) {
  const int64_t n_rows = static_cast<int64_t>(batch.subject_last.size()), padded_length = batch.ids.size(1);
  const int64_t window = recompute_window(batch);
  const int64_t past = *std::max_element(batch.subject_last.begin(), batch.subject_last.end());
  std::vector<int64_t> columns;
  for (int64_t r = 0; r < n_rows; ++r) {
    for (int64_t j = 0; j < window; ++j) {
      // Beyond a row's end any column (and position) will do: those slots precede nothing real.
      columns.push_back(std::min(batch.subject_last[r] + j, padded_length - 1));
    }
  }
  const at::Tensor column_index = at::tensor(columns, at::kLong).view({n_rows, window}).to(device);
  ForwardPass pass;
  pass.ids = batch.ids.gather(1, column_index);
  auto& options = pass.options;
  options.start_layer = hparams.layer;
  options.initial_hidden = layer_input.hidden_entering.gather(
      1, column_index.unsqueeze(-1).expand({n_rows, window, layer_input.hidden_entering.size(2)}));
  options.row_positions = column_index;  // a real token's column is its position
  if (past > 0) attach_past(pass, batch, layer_input, hparams.layer, past, device);
  options.intervention.layer = hparams.layer;
  for (int64_t r = 0; r < n_rows; ++r) options.intervention.delta_at.push_back({r, 0});
  options.intervention.delta_mask = make_position_mask(options.intervention.delta_at, n_rows, window, at::kFloat, device);
  std::vector<TokenPosition> window_targets;  // the same targets, in window coordinates
  for (const auto& tp : targets.positions) window_targets.push_back({tp.row, tp.position - batch.subject_last[tp.row]});
  // Logits rows: the targets (when the loss reads the last layer), then the KL positions.
  std::vector<TokenPosition> logits_positions = loss_at_last_layer ? window_targets : std::vector<TokenPosition>{};
  for (int64_t kl_row : kl_rows) logits_positions.push_back({kl_row, 0});
  if (!loss_at_last_layer) {
    options.keep_hidden_entering = hparams.v_loss_layer + 1;
    pass.hidden_targets = make_position_index(window_targets, device);
  }
  options.logits_index = make_position_index(logits_positions, device);
  return pass;
}

}  // namespace value_detail

namespace {

using namespace value_detail;

// What value_loss reads from one forward pass at δ: the target rows' logits [R*|t|, V] (the
// reference path passes log-probabilities, as the paper's code) and the KL row's [V].
struct LossLogits {
  at::Tensor target, kl;
};

LossLogits loss_logits(const CausalLM& model, ForwardPass& pass, const at::Tensor& delta, ForwardPath path,
                       bool loss_at_last_layer, int64_t target_count) {
  pass.options.intervention.delta = delta;
  ForwardOutput out = model.forward(pass.ids, pass.options);
  LossLogits logits;
  if (path == ForwardPath::Reference) {
    at::Tensor full = loss_at_last_layer ? out.logits : model.logits_from_hidden(out.hidden_entering);
    at::Tensor log_probs = at::log_softmax(full.to(at::kFloat), -1);  // [B, T, V], as the paper's code
    logits.target = log_probs.index({pass.targets.rows, pass.targets.positions});
    logits.kl = out.logits.index({pass.kl.rows, pass.kl.positions})[0];
  } else {
    logits.target = loss_at_last_layer ? out.logits.slice(0, 0, target_count)
                                       : model.logits_from_hidden(out.hidden_entering.index(
                                             {pass.hidden_targets.rows, pass.hidden_targets.positions}));
    logits.kl = out.logits[out.logits.size(0) - 1];
  }
  return logits;
}

// The optimisation of δ: its state (δ, Adam's moments, P_init, the per-iteration terms) and the
// iterations, eager or replayed from a CUDA graph.
class ValueOptimizer {
 public:
  ValueOptimizer(const CausalLM& model, const ValueBatch& batch, const RewriteLayerInput& layer_input,
                 const RomeHparams& hparams, ForwardPath path);
  ValueOptimization run();

 private:
  ValueLoss loss_at_delta();
  void step(const at::Tensor& loss, bool on_device);
  double record(const at::Tensor& terms, int64_t it);
  bool graph_iteration(CudaGraphStep& graph, int64_t it, bool last);
  ValueOptimization finish();

  const CausalLM& model_;
  const RomeHparams& hparams_;
  const ForwardPath path_;
  const bool loss_at_last_layer_;
  ValueOptimization result_;
  at::Tensor target_init_norm_, max_norm_, delta_;
  at::Tensor kl_init_;              // [V] log P_init at the KL position
  AdamState adam_;
  TargetTokens targets_;
  ForwardPass pass_;
  std::vector<at::Tensor> history_;  // per iteration [loss, nll, kl, wd], read back once at the end
  at::Tensor graph_terms_, delta_before_step_;  // written by the recorded step on each replay
};

ValueOptimizer::ValueOptimizer(const CausalLM& model, const ValueBatch& batch, const RewriteLayerInput& layer_input,
                               const RomeHparams& hparams, ForwardPath path)
    : model_(model), hparams_(hparams), path_(path),
      loss_at_last_layer_(hparams.v_loss_layer == model.config().n_layers - 1) {
  const auto device = model.device();
  result_.target_init = layer_input.outputs[0].detach().to(at::kFloat).clone();  // bare prompt, subject token
  target_init_norm_ = result_.target_init.norm();
  max_norm_ = hparams.clamp_norm_factor * target_init_norm_;
  delta_ = at::zeros({model.config().d_model}, at::TensorOptions().dtype(at::kFloat).device(device));
  delta_.requires_grad_(true);
  adam_.lr = hparams.v_lr;
  targets_ = target_tokens(batch, device);
  pass_ = path == ForwardPath::Reference
              ? reference_pass(batch, targets_, hparams, loss_at_last_layer_, device)
              : window_pass(batch, layer_input, targets_, hparams, loss_at_last_layer_, device, {batch.rewriting_rows});
}

// The loss at the current δ (`total` keeps its autograd graph to δ); the first call sets P_init.
ValueLoss ValueOptimizer::loss_at_delta() {
  const LossLogits logits = loss_logits(model_, pass_, delta_, path_, loss_at_last_layer_, targets_.labels.size(0));
  ValueLoss loss = value_loss(logits.target, targets_.labels, logits.kl, kl_init_, delta_, target_init_norm_, hparams_);
  if (!kl_init_.defined()) kl_init_ = loss.kl_log_probs.clone();
  return loss;
}

// One Adam step on δ, then the clamp.
void ValueOptimizer::step(const at::Tensor& loss, bool on_device) {
  at::Tensor grad = torch::autograd::grad({loss}, {delta_})[0];
  at::NoGradGuard no_grad;
  if (on_device)
    adam_.update_on_device(delta_, grad);
  else
    adam_.update(delta_, grad);
  clamp_delta(delta_, max_norm_);
}

// Records an iteration's terms; the loss read back is the one host sync per step (early stop).
double ValueOptimizer::record(const at::Tensor& terms, int64_t it) {
  const double loss_value = terms[0].item<double>();
  history_.push_back(terms);
  result_.iterations = it + 1;
  if (!std::isfinite(loss_value))
    throw NumericError(non_finite_loss_message(loss_value, it));
  return loss_value;
}

// One iteration replayed from the CUDA graph (recorded on the first call). The graph's step also
// updates δ; an iteration that stops (early stop, last) puts the δ it was given back. True: stop.
bool ValueOptimizer::graph_iteration(CudaGraphStep& graph, int64_t it, bool last) {
  if (!graph.recorded()) {
    adam_.prepare_on_device(delta_);
    delta_before_step_ = at::empty_like(delta_.detach());
    graph.record([&] {
      {
        at::NoGradGuard no_grad;
        delta_before_step_.copy_(delta_);
      }
      ValueLoss loss = loss_at_delta();
      graph_terms_ = loss.terms();
      step(loss.total, /*on_device=*/true);
    });
  }
  graph.replay();
  const double loss_value = record(graph_terms_.clone(), it);
  if (loss_value < hparams_.early_stop_loss || last) {
    at::NoGradGuard no_grad;
    delta_.copy_(delta_before_step_);
    return true;
  }
  ++result_.adam_steps;
  return false;
}

ValueOptimization ValueOptimizer::run() {
  // On a GPU the optimised path replays one step recorded as a CUDA graph from the third iteration
  // on: the first sets P_init, the first two warm up what the recording must find ready.
  constexpr int64_t kEagerIterations = 2;
  CudaGraphStep graph(model_.device(),
                      path_ == ForwardPath::Optimized && hparams_.v_num_grad_steps > kEagerIterations + 1);
  for (int64_t it = 0; it < hparams_.v_num_grad_steps; ++it) {
    const bool last = it == hparams_.v_num_grad_steps - 1;
    if (graph.active() && it >= kEagerIterations) {
      if (graph_iteration(graph, it, last)) break;
      continue;
    }
    ValueLoss loss = loss_at_delta();
    const double loss_value = record(loss.terms(), it);
    if (loss_value < hparams_.early_stop_loss || last) break;  // the last iteration takes no step
    step(loss.total, /*on_device=*/false);
    ++result_.adam_steps;
  }
  graph.finish();
  return finish();
}

// The per-iteration terms read back, and v* = target_init + δ.
ValueOptimization ValueOptimizer::finish() {
  if (!history_.empty()) {
    at::Tensor values = at::stack(history_).to(at::kDouble).cpu();  // [iterations, 4]
    for (int64_t i = 0; i < values.size(0); ++i) {
      result_.loss.push_back(values[i][0].item<double>());
      result_.nll.push_back(values[i][1].item<double>());
      result_.kl.push_back(values[i][2].item<double>());
      result_.weight_decay.push_back(values[i][3].item<double>());
    }
  }
  result_.delta = delta_.detach().clone();
  result_.v_star = result_.target_init + result_.delta;
  if (!at::isfinite(result_.v_star).all().item<bool>()) throw NumericError("v* optimisation: v* is not finite");
  return std::move(result_);
}

}  // namespace

ValueOptimization optimize_value(const CausalLM& model, const ValueBatch& batch, const RewriteLayerInput& layer_input,
                                 const RomeHparams& hparams, ForwardPath path) {
  return ValueOptimizer(model, batch, layer_input, hparams, path).run();
}

}  // namespace rc
