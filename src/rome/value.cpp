#include "rome_collapse/rome/value.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

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
    const int64_t lookup = subject_last_index(tokenizer, add_bos, with_placeholder, request.subject);
    std::vector<int64_t> ids = tokenizer.encode(fill_placeholder(with_placeholder, request.subject), add_bos);
    if (static_cast<int64_t>(ids.size()) < static_cast<int64_t>(batch.target_ids.size()) || lookup >= int64_t(ids.size()))
      throw InputError("prompt \"" + with_placeholder + "\" is too short for its target");
    std::vector<int64_t> key_prompt =
        tokenizer.encode(fill_placeholder(fill_placeholder(context, request.prompt), request.subject), add_bos);
    for (int64_t j = 0; j <= lookup; ++j)
      if (j >= int64_t(key_prompt.size()) || key_prompt[j] != ids[j]) batch.keys_match_template_encoding = false;
    batch.lookup.push_back(lookup);
    batch.lengths.push_back(static_cast<int64_t>(ids.size()));
    rows.push_back(std::move(ids));
  }
  batch.rewriting_rows = static_cast<int64_t>(rows.size());
  batch.lookup.push_back(subject_last_index(tokenizer, add_bos, kl_prompt, request.subject));
  rows.push_back(tokenizer.encode(fill_placeholder(kl_prompt, request.subject), add_bos));
  batch.lengths.push_back(static_cast<int64_t>(rows.back().size()));
  batch.ids = pad_batch(rows, pad_id, device);
  return batch;
}

LayerCapture capture_rewrite_layer(const CausalLM& model, const ValueBatch& batch, int64_t layer, bool record_cache) {
  at::NoGradGuard no_grad;
  ForwardOptions options;
  options.intervention.layer = layer;
  for (size_t row = 0; row < batch.lookup.size(); ++row)
    options.intervention.capture_at.push_back({static_cast<int64_t>(row), batch.lookup[row]});
  options.keep_hidden_entering = layer;
  LayerCapture capture;
  if (record_cache) {
    options.record = &capture.cache;
    options.compute_logits = false;
  } else {
    options.stop_after_layer = layer;
  }
  ForwardOutput out = model.forward(batch.ids, options);
  for (int64_t l = 0; l < layer && l < static_cast<int64_t>(capture.cache.keys.size()); ++l)
    capture.cache.keys[l] = capture.cache.values[l] = at::Tensor();  // never read: layers below L are not rerun
  capture.keys = out.captured_keys;
  capture.outputs = out.captured_outputs;
  capture.hidden_entering = out.hidden_entering;
  return capture;
}

namespace {

// Adam exactly as torch.optim.Adam (default betas, eps, no weight decay) updates one parameter.
struct AdamState {
  double lr, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
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
};

// One forward pass of the optimisation loop over a subset of the batch's rows. Everything that
// does not change between iterations (ids, cached hidden states, index tensors) is built once.
struct ForwardPass {
  at::Tensor ids;                      // [n, T_pass]
  ForwardOptions options;              // delta mask, logits positions, start layer ...
  int64_t target_count = 0;            // target logits this pass yields (first rows of its logits)
  bool has_kl_row = false;             // the KL position's logits follow the targets
  PositionIndex hidden_targets;        // v_loss_layer < last layer: targets gathered from hidden states
  std::shared_ptr<KVCache> past;       // the rows' cached positions before the recomputed span
};

// Each pass recomputes, for its rows, the positions from the earliest subject index to the longest
// row (earlier positions come from the KV cache). Rows sorted by subject index are split into at
// most three contiguous groups when that removes at least 15% of the recomputed tokens (the cost
// of layers >= L is proportional to them). CPU only: on a GPU one larger batch beats several.
std::vector<std::vector<int64_t>> recompute_buckets(const std::vector<int64_t>& starts,
                                                    const std::vector<int64_t>& lengths, bool allow_split) {
  const int64_t n = static_cast<int64_t>(lengths.size());
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return starts[a] < starts[b]; });
  auto cost = [&](int64_t from, int64_t to) {  // recomputed tokens of rows [from, to) in sorted order
    int64_t longest = 0;
    for (int64_t i = from; i < to; ++i) longest = std::max(longest, lengths[order[i]]);
    return (to - from) * (longest - starts[order[from]]);
  };
  const int64_t single = cost(0, n);
  std::vector<int64_t> best_cuts;
  int64_t best = single;
  if (allow_split) {
    for (int64_t a = 1; a < n; ++a) {
      if (cost(0, a) + cost(a, n) < best) best = cost(0, a) + cost(a, n), best_cuts = {a};
      for (int64_t b = a + 1; b < n; ++b)
        if (cost(0, a) + cost(a, b) + cost(b, n) < best) best = cost(0, a) + cost(a, b) + cost(b, n), best_cuts = {a, b};
    }
    if (best > 0.85 * double(single)) best_cuts.clear();
  }
  std::vector<std::vector<int64_t>> buckets;
  int64_t from = 0;
  best_cuts.push_back(n);
  for (int64_t cut : best_cuts) {
    buckets.emplace_back(order.begin() + from, order.begin() + cut);
    std::sort(buckets.back().begin(), buckets.back().end());
    from = cut;
  }
  return buckets;
}

}  // namespace

ValueOptimization optimize_value(const CausalLM& model, const ValueBatch& batch, const LayerCapture& capture,
                                 const RomeHparams& hparams, ForwardPath path) {
  const int64_t layer = hparams.layer, rows = batch.rewriting_rows, n_targets = int64_t(batch.target_ids.size());
  const int64_t last_layer = model.config().n_layers - 1;
  const bool loss_at_last_layer = hparams.v_loss_layer == last_layer;
  const auto device = model.device();
  ValueOptimization result;
  result.target_init = capture.outputs[0].detach().to(at::kFloat).clone();  // bare prompt, subject token
  // Norms stay float32 tensors, as in the paper's code: the weight-decay gradient dominates the
  // optimisation of small models, and its float32 rounding is visible in v* at the 1e-3 level.
  const at::Tensor target_init_norm = result.target_init.norm();

  at::Tensor delta = at::zeros({model.config().d_model}, at::TensorOptions().dtype(at::kFloat).device(device));
  delta.requires_grad_(true);
  AdamState adam{hparams.v_lr};

  // Logits at the last |t| real positions of each rewriting row predict the target tokens; the
  // KL term reads the KL prompt's subject position. Passes list targets in their own row order,
  // so labels follow the same order (the NLL is a mean over rows, the order does not matter).
  auto targets_of_row = [&](int64_t row, int64_t local_row) {
    std::vector<TokenPosition> positions;
    for (int64_t j = 0; j < n_targets; ++j) positions.push_back({local_row, batch.lengths[row] - n_targets + j});
    return positions;
  };
  std::vector<ForwardPass> passes;
  std::vector<int64_t> label_order;
  if (path == ForwardPath::Reference) {
    // The paper's code: the whole padded batch through every layer, full logits everywhere.
    ForwardPass pass;
    pass.ids = batch.ids;
    pass.options.intervention.layer = layer;
    for (size_t row = 0; row < batch.lookup.size(); ++row)
      pass.options.intervention.delta_at.push_back({static_cast<int64_t>(row), batch.lookup[row]});
    pass.options.intervention.delta_mask = make_position_mask(pass.options.intervention.delta_at, batch.ids.size(0),
                                                              batch.ids.size(1), at::kFloat, device);
    if (!loss_at_last_layer) pass.options.keep_hidden_entering = hparams.v_loss_layer + 1;
    passes.push_back(std::move(pass));
  } else {
    std::vector<int64_t> all_rows(batch.lookup.size());
    for (size_t i = 0; i < all_rows.size(); ++i) all_rows[i] = static_cast<int64_t>(i);
    for (const auto& bucket : recompute_buckets(batch.lookup, batch.lengths, device.is_cpu())) {
      ForwardPass pass;
      int64_t longest = 0, first = batch.lengths[bucket[0]];  // recompute positions [first, longest)
      for (int64_t row : bucket) {
        longest = std::max(longest, batch.lengths[row]);
        first = std::min(first, batch.lookup[row]);
      }
      at::Tensor row_index = at::tensor(bucket, at::kLong).to(device);
      pass.ids = batch.ids.index_select(0, row_index).slice(1, first, longest);
      auto& options = pass.options;
      options.start_layer = layer;
      options.initial_hidden = capture.hidden_entering.index_select(0, row_index).slice(1, first, longest);
      pass.past = std::make_shared<KVCache>();
      pass.past->keys.resize(capture.cache.keys.size());
      pass.past->values.resize(capture.cache.values.size());
      for (size_t l = static_cast<size_t>(layer); l < capture.cache.keys.size(); ++l) {
        pass.past->keys[l] = capture.cache.keys[l].index_select(0, row_index).slice(2, 0, first);
        pass.past->values[l] = capture.cache.values[l].index_select(0, row_index).slice(2, 0, first);
      }
      options.past = pass.past.get();
      options.intervention.layer = layer;
      std::vector<TokenPosition> target_positions;
      int64_t kl_local_row = -1;
      for (size_t local = 0; local < bucket.size(); ++local) {
        const int64_t row = bucket[local];
        options.intervention.delta_at.push_back({static_cast<int64_t>(local), batch.lookup[row] - first});
        if (row == rows) {
          kl_local_row = static_cast<int64_t>(local);
          continue;
        }
        for (auto tp : targets_of_row(row, static_cast<int64_t>(local))) {
          tp.position -= first;
          target_positions.push_back(tp);
        }
        for (int64_t j = 0; j < n_targets; ++j) label_order.push_back(j);
      }
      options.intervention.delta_mask = make_position_mask(options.intervention.delta_at, pass.ids.size(0),
                                                            pass.ids.size(1), at::kFloat, device);
      pass.target_count = static_cast<int64_t>(target_positions.size());
      pass.has_kl_row = kl_local_row >= 0;
      std::vector<TokenPosition> logits_positions = loss_at_last_layer ? target_positions : std::vector<TokenPosition>{};
      if (pass.has_kl_row) logits_positions.push_back({kl_local_row, batch.lookup[rows] - first});
      if (!loss_at_last_layer) {
        options.keep_hidden_entering = hparams.v_loss_layer + 1;
        pass.hidden_targets = make_position_index(target_positions, device);
      }
      if (logits_positions.empty())
        options.compute_logits = false;
      else
        options.logits_index = make_position_index(logits_positions, device);
      passes.push_back(std::move(pass));
    }
  }
  std::vector<int64_t> target_labels;
  if (path == ForwardPath::Reference) {
    for (int64_t r = 0; r < rows; ++r) target_labels.insert(target_labels.end(), batch.target_ids.begin(), batch.target_ids.end());
  } else {
    for (int64_t j : label_order) target_labels.push_back(batch.target_ids[j]);
  }
  at::Tensor labels = at::tensor(target_labels, at::kLong).to(device);
  std::vector<TokenPosition> reference_targets;
  for (int64_t r = 0; r < rows; ++r)
    for (const auto& tp : targets_of_row(r, r)) reference_targets.push_back(tp);
  const PositionIndex reference_target_index = make_position_index(reference_targets, device);
  const PositionIndex reference_kl_index = make_position_index({{rows, batch.lookup[rows]}}, device);

  at::Tensor kl_init;               // [V] log P_init at the KL position
  std::vector<at::Tensor> history;  // per iteration [loss, nll, kl, wd], read back once at the end
  for (int64_t it = 0; it < hparams.v_num_grad_steps; ++it) {
    std::vector<at::Tensor> target_logit_parts;  // [n_pass_targets, V] each
    at::Tensor kl_logits;                        // [V]
    for (auto& pass : passes) {
      pass.options.intervention.delta = delta;
      ForwardOutput out = model.forward(pass.ids, pass.options);
      if (path == ForwardPath::Reference) {
        at::Tensor full = loss_at_last_layer ? out.logits : model.logits_from_hidden(out.hidden_entering);
        at::Tensor log_probs = at::log_softmax(full.to(at::kFloat), -1);  // [B, T, V], as the paper's code
        target_logit_parts.push_back(log_probs.index({reference_target_index.rows, reference_target_index.positions}));
        kl_logits = out.logits.index({reference_kl_index.rows, reference_kl_index.positions})[0];
        continue;
      }
      if (loss_at_last_layer) {
        target_logit_parts.push_back(out.logits.slice(0, 0, pass.target_count));
      } else if (pass.target_count > 0) {
        target_logit_parts.push_back(model.logits_from_hidden(
            out.hidden_entering.index({pass.hidden_targets.rows, pass.hidden_targets.positions})));
      }
      if (pass.has_kl_row) kl_logits = out.logits[out.logits.size(0) - 1];
    }
    at::Tensor target_log_probs = at::log_softmax(at::cat(target_logit_parts, 0).to(at::kFloat), -1);  // [R*|t|, V]
    at::Tensor kl_log_probs = at::log_softmax(kl_logits.to(at::kFloat), -1);
    if (!kl_init.defined()) kl_init = kl_log_probs.detach().clone();

    at::Tensor token_log_probs = target_log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1);  // [R*|t|]
    at::Tensor nll = -token_log_probs.sum() / double(n_targets * rows);  // mean over rows of per-row mean
    at::Tensor kl = hparams.kl_factor * (kl_log_probs.exp() * (kl_log_probs - kl_init)).sum();
    at::Tensor weight_decay = hparams.v_weight_decay * (delta.norm() / target_init_norm.pow(2));
    at::Tensor loss = nll + kl + weight_decay;

    const double loss_value = loss.item<double>();  // the one host sync per step: the early-stop test
    history.push_back(at::stack({loss.detach(), nll.detach(), kl.detach(), weight_decay.detach()}));
    result.iterations = it + 1;
    if (!std::isfinite(loss_value))
      throw NumericError("v* optimisation: the loss became " + std::to_string(loss_value) + " at iteration " +
                         std::to_string(it) + " (check hparams such as v_lr and v_weight_decay, and the model's weights)");
    if (loss_value < hparams.early_stop_loss) break;
    if (it == hparams.v_num_grad_steps - 1) break;  // the last iteration takes no step

    at::Tensor grad = torch::autograd::grad({loss}, {delta})[0];
    {
      at::NoGradGuard no_grad;
      adam.update(delta, grad);
      ++result.adam_steps;
      // Project into the ball of radius clamp_norm_factor·‖target_init‖ without a host sync.
      const at::Tensor max_norm = hparams.clamp_norm_factor * target_init_norm;
      delta.mul_(at::clamp_max(max_norm / delta.norm(), 1.0));
    }
  }
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
