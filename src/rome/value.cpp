#include "rome_collapse/rome/value.h"

#include <cmath>

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

LayerCapture capture_rewrite_layer(const CausalLM& model, const ValueBatch& batch, int64_t layer) {
  at::NoGradGuard no_grad;
  ForwardOptions options;
  options.intervention.layer = layer;
  for (size_t row = 0; row < batch.lookup.size(); ++row)
    options.intervention.capture_at.push_back({static_cast<int64_t>(row), batch.lookup[row]});
  options.keep_hidden_entering = layer;
  options.stop_after_layer = layer;
  ForwardOutput out = model.forward(batch.ids, options);
  return {out.captured_keys, out.captured_outputs, out.hidden_entering};
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

}  // namespace

ValueOptimization optimize_value(const CausalLM& model, const ValueBatch& batch, const LayerCapture& capture,
                                 const RomeHparams& hparams, ForwardPath path) {
  const int64_t layer = hparams.layer, rows = batch.rewriting_rows, n_targets = int64_t(batch.target_ids.size());
  const int64_t last_layer = model.config().n_layers - 1;
  const auto device = model.device();
  ValueOptimization result;
  result.target_init = capture.outputs[0].detach().to(at::kFloat).clone();  // bare prompt, subject token
  // Norms stay float32 tensors, as in the paper's code: the weight-decay gradient dominates the
  // optimisation of small models, and its float32 rounding is visible in v* at the 1e-3 level.
  const at::Tensor target_init_norm = result.target_init.norm();

  at::Tensor delta = at::zeros({model.config().d_model}, at::TensorOptions().dtype(at::kFloat).device(device));
  delta.requires_grad_(true);
  AdamState adam{hparams.v_lr};

  // Target positions: logits at the last |t| real positions of each rewriting row predict the target.
  std::vector<TokenPosition> target_positions;
  std::vector<int64_t> target_labels;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n_targets; ++j) {
      target_positions.push_back({r, batch.lengths[r] - n_targets + j});
      target_labels.push_back(batch.target_ids[j]);
    }
  const TokenPosition kl_position{rows, batch.lookup[rows]};
  at::Tensor labels = at::tensor(target_labels, at::kLong).to(device);
  at::Tensor kl_init;  // [V] log P_init at the KL position
  std::vector<at::Tensor> history;  // per iteration [loss, nll, kl, wd], read back once at the end

  ForwardOptions options;
  options.intervention.layer = layer;
  for (size_t row = 0; row < batch.lookup.size(); ++row)
    options.intervention.delta_at.push_back({static_cast<int64_t>(row), batch.lookup[row]});
  if (path == ForwardPath::Optimized) {
    options.start_layer = layer;
    options.initial_hidden = capture.hidden_entering;
    if (hparams.v_loss_layer == last_layer) {
      options.logits_at = target_positions;
      options.logits_at.push_back(kl_position);
    } else {
      options.logits_at = {kl_position};
      options.keep_hidden_entering = hparams.v_loss_layer + 1;
    }
  }

  for (int64_t it = 0; it < hparams.v_num_grad_steps; ++it) {
    options.intervention.delta = delta;
    ForwardOutput out = model.forward(batch.ids, options);
    at::Tensor target_logits, kl_logits;  // [R*|t|, V], [V]
    auto gather_rows = [&](const at::Tensor& full, const std::vector<TokenPosition>& at_positions) {
      std::vector<int64_t> r, p;
      for (const auto& tp : at_positions) {
        r.push_back(tp.row);
        p.push_back(tp.position);
      }
      return full.index({at::tensor(r, at::kLong).to(device), at::tensor(p, at::kLong).to(device)});
    };
    if (path == ForwardPath::Reference) {
      // The paper's code: full [B, T, V] log-softmax of the v_loss_layer output, then gather.
      at::Tensor full_logits = hparams.v_loss_layer == last_layer ? out.logits : at::Tensor();
      if (!full_logits.defined()) {
        ForwardOptions again = options;
        again.keep_hidden_entering = hparams.v_loss_layer + 1;
        full_logits = model.logits_from_hidden(model.forward(batch.ids, again).hidden_entering);
      }
      at::Tensor log_probs = at::log_softmax(full_logits.to(at::kFloat), -1);  // [B, T, V]
      target_logits = gather_rows(log_probs, target_positions);
      kl_logits = gather_rows(at::log_softmax(out.logits.to(at::kFloat), -1), {kl_position})[0];
    } else if (hparams.v_loss_layer == last_layer) {
      target_logits = out.logits.slice(0, 0, rows * n_targets);
      kl_logits = out.logits[rows * n_targets];
    } else {
      target_logits = model.logits_from_hidden(gather_rows(out.hidden_entering, target_positions));
      kl_logits = out.logits[0];
    }
    at::Tensor target_log_probs = at::log_softmax(target_logits.to(at::kFloat), -1);
    at::Tensor kl_log_probs = at::log_softmax(kl_logits.to(at::kFloat), -1);
    if (!kl_init.defined()) kl_init = kl_log_probs.detach().clone();

    at::Tensor token_log_probs = target_log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1);  // [R*|t|]
    at::Tensor nll = -(token_log_probs.view({rows, n_targets}).sum(1) / double(n_targets)).mean();
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
