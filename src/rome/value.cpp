#include "rome_collapse/rome/value.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <ATen/core/grad_mode.h>

#include "rome_collapse/model/cuda_graph_step.h"
#include "rome_collapse/rome/keys.h"
#include "rome_collapse/util/error.h"

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

namespace {

// Adam exactly as torch.optim.Adam (default betas, eps, no weight decay) updates one parameter.
struct AdamState {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  at::Tensor exp_avg, exp_avg_sq;
  int64_t step = 0;
  void update(at::Tensor& param, const at::Tensor& grad) {
    if (!exp_avg.defined()) {
      exp_avg = at::zeros_like(param);
      exp_avg_sq = at::zeros_like(param);
    }
    ++step;
    exp_avg.mul_(beta1).add_(grad, 1 - beta1);
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
    const double bias_correction1 = 1 - std::pow(beta1, step);
    const double bias_correction2_sqrt = std::sqrt(1 - std::pow(beta2, step));
    at::Tensor denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps);
    param.addcdiv_(exp_avg, denom, -lr / bias_correction1);
  }

  // The same update with the step count and the bias corrections as device tensors: a CUDA graph
  // freezes host scalars into it. prepare_on_device() runs before the graph is recorded.
  at::Tensor device_step, negative_lr;  // float64 scalars on the parameter's device
  void prepare_on_device(const at::Tensor& param) {
    const auto options = at::TensorOptions().dtype(at::kDouble).device(param.device());
    device_step = at::scalar_tensor(double(step), options);
    negative_lr = at::scalar_tensor(-lr, options);
  }
  void update_on_device(at::Tensor& param, const at::Tensor& grad) {
    device_step.add_(1);
    exp_avg.mul_(beta1).add_(grad, 1 - beta1);
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
    at::Tensor bias_correction1 = 1 - at::pow(beta1, device_step);
    at::Tensor bias_correction2_sqrt = at::sqrt(1 - at::pow(beta2, device_step));
    at::Tensor denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps);
    param.addcdiv_(exp_avg * (negative_lr / bias_correction1), denom);  // (value * t1) / t2, as above
  }
};

// The optimisation loop's forward pass. Everything that does not change between iterations (ids,
// cached hidden states, index tensors) is built once.
struct ForwardPass {
  at::Tensor ids;                      // [R + 1, T] (reference) or [R + 1, W] (ragged windows)
  ForwardOptions options;              // delta mask, logits positions, start layer ...
  PositionIndex targets, kl;           // reference path: where the loss reads the full logits
  PositionIndex hidden_targets;        // ragged, v_loss_layer < last layer: targets in the hidden states
  std::shared_ptr<KVCache> past;       // ragged: the rows' cached positions before their windows
};

}  // namespace

ValueOptimization optimize_value(const CausalLM& model, const ValueBatch& batch, const RewriteLayerInput& layer_input,
                                 const RomeHparams& hparams, ForwardPath path) {
  const int64_t layer = hparams.layer, rows = batch.rewriting_rows, n_targets = int64_t(batch.target_ids.size());
  const int64_t last_layer = model.config().n_layers - 1;
  const bool loss_at_last_layer = hparams.v_loss_layer == last_layer;
  const auto device = model.device();
  ValueOptimization result;
  result.target_init = layer_input.outputs[0].detach().to(at::kFloat).clone();  // bare prompt, subject token
  // Norms stay float32 tensors, as in the paper's code: the weight-decay gradient dominates the
  // optimisation of small models, and its float32 rounding is visible in v* at the 1e-3 level.
  const at::Tensor target_init_norm = result.target_init.norm();

  at::Tensor delta = at::zeros({model.config().d_model}, at::TensorOptions().dtype(at::kFloat).device(device));
  delta.requires_grad_(true);
  AdamState adam;
  adam.lr = hparams.v_lr;

  // Logits at the last |t| real positions of each rewriting row predict the target tokens (labels:
  // the target ids, row after row); the KL term reads the KL prompt's subject position.
  std::vector<TokenPosition> target_positions;  // in the padded batch
  std::vector<int64_t> target_labels;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < n_targets; ++j) {
      target_positions.push_back({r, batch.lengths[r] - n_targets + j});
      target_labels.push_back(batch.target_ids[j]);
    }
  }
  const at::Tensor labels = at::tensor(target_labels, at::kLong).to(device);
  const int64_t target_count = static_cast<int64_t>(target_positions.size());

  ForwardPass pass;
  if (path == ForwardPath::Reference) {
    // The paper's code: the whole padded batch through every layer, full logits everywhere.
    pass.ids = batch.ids;
    pass.options.intervention.layer = layer;
    for (size_t row = 0; row < batch.subject_last.size(); ++row)
      pass.options.intervention.delta_at.push_back({static_cast<int64_t>(row), batch.subject_last[row]});
    pass.options.intervention.delta_mask = make_position_mask(pass.options.intervention.delta_at, batch.ids.size(0),
                                                              batch.ids.size(1), at::kFloat, device);
    if (!loss_at_last_layer) pass.options.keep_hidden_entering = hparams.v_loss_layer + 1;
    pass.targets = make_position_index(target_positions, device);
    pass.kl = make_position_index({{rows, batch.subject_last[rows]}}, device);
  } else {
    // Ragged windows: row r recomputes only positions [subject_last_r, length_r), from its subject's last
    // token (where δ enters) to its end; everything before is δ-free and comes from the unedited
    // pass's KV cache. Rows differ in where their window starts (their templates' prefixes), so the
    // windows are left-aligned into one [R + 1, W] pass with per-row positions, and each row's
    // cache is masked from its own window's start on. One pass, the fewest recomputed tokens.
    const int64_t n_rows = static_cast<int64_t>(batch.subject_last.size()), padded_length = batch.ids.size(1);
    const int64_t window = recompute_window(batch);
    const int64_t past = *std::max_element(batch.subject_last.begin(), batch.subject_last.end());
    std::vector<int64_t> columns, past_valid;
    for (int64_t r = 0; r < n_rows; ++r) {
      for (int64_t j = 0; j < window; ++j) {
        // Beyond a row's end any column (and position) will do: those slots precede nothing real.
        columns.push_back(std::min(batch.subject_last[r] + j, padded_length - 1));
      }
      for (int64_t p = 0; p < past; ++p) past_valid.push_back(p < batch.subject_last[r] ? 1 : 0);
    }
    const at::Tensor column_index = at::tensor(columns, at::kLong).view({n_rows, window}).to(device);
    pass.ids = batch.ids.gather(1, column_index);
    auto& options = pass.options;
    options.start_layer = layer;
    options.initial_hidden = layer_input.hidden_entering.gather(
        1, column_index.unsqueeze(-1).expand({n_rows, window, layer_input.hidden_entering.size(2)}));
    options.row_positions = column_index;  // a real token's column is its position
    if (past > 0) {
      pass.past = std::make_shared<KVCache>();
      pass.past->keys.resize(layer_input.cache.keys.size());
      pass.past->values.resize(layer_input.cache.values.size());
      for (size_t l = static_cast<size_t>(layer); l < layer_input.cache.keys.size(); ++l) {
        pass.past->keys[l] = layer_input.cache.keys[l].slice(2, 0, past);
        pass.past->values[l] = layer_input.cache.values[l].slice(2, 0, past);
      }
      options.past = pass.past.get();
      options.past_valid = at::tensor(past_valid, at::kLong).view({n_rows, past}).to(at::kBool).to(device);
    }
    options.intervention.layer = layer;
    for (int64_t r = 0; r < n_rows; ++r) options.intervention.delta_at.push_back({r, 0});
    options.intervention.delta_mask = make_position_mask(options.intervention.delta_at, n_rows, window, at::kFloat, device);
    std::vector<TokenPosition> window_targets;  // the same targets, in window coordinates
    for (const auto& tp : target_positions) window_targets.push_back({tp.row, tp.position - batch.subject_last[tp.row]});
    // Logits rows: the targets (when the loss reads the last layer), then the KL position.
    std::vector<TokenPosition> logits_positions = loss_at_last_layer ? window_targets : std::vector<TokenPosition>{};
    logits_positions.push_back({rows, 0});
    if (!loss_at_last_layer) {
      options.keep_hidden_entering = hparams.v_loss_layer + 1;
      pass.hidden_targets = make_position_index(window_targets, device);
    }
    options.logits_index = make_position_index(logits_positions, device);
  }

  at::Tensor kl_init;               // [V] log P_init at the KL position
  std::vector<at::Tensor> history;  // per iteration [loss, nll, kl, wd], read back once at the end
  const at::Tensor max_norm = hparams.clamp_norm_factor * target_init_norm;

  // The loss at the current δ (`loss` keeps its autograd graph to δ) and its terms, stacked.
  auto compute_loss = [&](at::Tensor& loss) {
    pass.options.intervention.delta = delta;
    ForwardOutput out = model.forward(pass.ids, pass.options);
    at::Tensor target_logits;  // [R*|t|, V]
    at::Tensor kl_logits;      // [V]
    if (path == ForwardPath::Reference) {
      at::Tensor full = loss_at_last_layer ? out.logits : model.logits_from_hidden(out.hidden_entering);
      at::Tensor log_probs = at::log_softmax(full.to(at::kFloat), -1);  // [B, T, V], as the paper's code
      target_logits = log_probs.index({pass.targets.rows, pass.targets.positions});
      kl_logits = out.logits.index({pass.kl.rows, pass.kl.positions})[0];
    } else {
      target_logits = loss_at_last_layer ? out.logits.slice(0, 0, target_count)
                                         : model.logits_from_hidden(out.hidden_entering.index(
                                               {pass.hidden_targets.rows, pass.hidden_targets.positions}));
      kl_logits = out.logits[out.logits.size(0) - 1];
    }
    at::Tensor target_log_probs = at::log_softmax(target_logits.to(at::kFloat), -1);  // [R*|t|, V]
    at::Tensor kl_log_probs = at::log_softmax(kl_logits.to(at::kFloat), -1);
    if (!kl_init.defined()) kl_init = kl_log_probs.detach().clone();

    at::Tensor token_log_probs = target_log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1);  // [R*|t|]
    at::Tensor nll = -token_log_probs.sum() / double(n_targets * rows);  // mean over rows of per-row mean
    at::Tensor kl = hparams.kl_factor * (kl_log_probs.exp() * (kl_log_probs - kl_init)).sum();
    at::Tensor weight_decay = hparams.v_weight_decay * (delta.norm() / target_init_norm.pow(2));
    loss = nll + kl + weight_decay;
    return at::stack({loss.detach(), nll.detach(), kl.detach(), weight_decay.detach()});
  };
  // One Adam step on δ, then the projection into the ball of radius clamp_norm_factor·‖target_init‖
  // (without a host sync).
  auto take_step = [&](const at::Tensor& loss, bool on_device) {
    at::Tensor grad = torch::autograd::grad({loss}, {delta})[0];
    at::NoGradGuard no_grad;
    if (on_device)
      adam.update_on_device(delta, grad);
    else
      adam.update(delta, grad);
    delta.mul_(at::clamp_max(max_norm / delta.norm(), 1.0));
  };
  // Records an iteration's terms; the loss read back is the one host sync per step (early stop).
  auto record = [&](const at::Tensor& terms, int64_t it) {
    const double loss_value = terms[0].item<double>();
    history.push_back(terms);
    result.iterations = it + 1;
    if (!std::isfinite(loss_value))
      throw NumericError("v* optimisation: the loss became " + std::to_string(loss_value) + " at iteration " +
                         std::to_string(it) + " (check hparams such as v_lr and v_weight_decay, and the model's weights)");
    return loss_value;
  };

  // On a GPU the optimised path replays one step recorded as a CUDA graph from the third iteration
  // on: the first sets the KL reference, the first two warm up what the recording must find ready. The graph
  // step also updates δ; an iteration that stops (early stop, last) puts the δ it was given back.
  constexpr int64_t kEagerIterations = 2;
  CudaGraphStep graph_step(device, path == ForwardPath::Optimized && hparams.v_num_grad_steps > kEagerIterations + 1);
  at::Tensor graph_terms, delta_before_step;
  for (int64_t it = 0; it < hparams.v_num_grad_steps; ++it) {
    const bool last = it == hparams.v_num_grad_steps - 1;
    if (graph_step.active() && it >= kEagerIterations) {
      if (!graph_step.recorded()) {
        adam.prepare_on_device(delta);
        delta_before_step = at::empty_like(delta.detach());
        graph_step.record([&] {
          {
            at::NoGradGuard no_grad;
            delta_before_step.copy_(delta);
          }
          at::Tensor loss;
          graph_terms = compute_loss(loss);
          take_step(loss, /*on_device=*/true);
        });
      }
      graph_step.replay();
      const double loss_value = record(graph_terms.clone(), it);
      if (loss_value < hparams.early_stop_loss || last) {
        at::NoGradGuard no_grad;
        delta.copy_(delta_before_step);
        break;
      }
      ++result.adam_steps;
      continue;
    }
    at::Tensor loss;
    const double loss_value = record(compute_loss(loss), it);
    if (loss_value < hparams.early_stop_loss || last) break;  // the last iteration takes no step
    take_step(loss, /*on_device=*/false);
    ++result.adam_steps;
  }
  graph_step.finish();
  if (!history.empty()) {
    at::Tensor values = at::stack(history).to(at::kDouble).cpu();  // [iterations, 4]
    for (int64_t i = 0; i < values.size(0); ++i) {
      result.loss.push_back(values[i][0].item<double>());
      result.nll.push_back(values[i][1].item<double>());
      result.kl.push_back(values[i][2].item<double>());
      result.weight_decay.push_back(values[i][3].item<double>());
    }
  }
  result.delta = delta.detach().clone();
  result.v_star = result.target_init + result.delta;
  if (!at::isfinite(result.v_star).all().item<bool>()) throw NumericError("v* optimisation: v* is not finite");
  return result;
}

}  // namespace rc
