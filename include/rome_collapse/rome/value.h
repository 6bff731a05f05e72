#pragma once
// v*: the value the edited layer should output at the subject so that the model says target_new.
// δ ∈ R^D is added to the MLP output of layer L at the subject's last token of every prompt and
// optimised with Adam on  NLL(target_new | 21 rewriting prompts) + kl_factor·KL(P_now ‖ P_init)
// at the KL prompt + v_weight_decay·‖δ‖/‖target_init‖²;  v* = target_init + δ.
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "rome_collapse/io/request.h"
#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/rome/hparams.h"
#include "rome_collapse/text/tokenizer.h"

namespace rc {

// " " + target, encoded with the tokenizer's convention, a leading BOS/UNK dropped.
std::vector<int64_t> target_token_ids(const Tokenizer& tokenizer, bool add_bos, const std::string& target);

// The optimisation batch: rows 0..R-1 are T[i](prompt) + decode(target[:-1]) with the subject
// filled in, row R is the KL prompt. Right-padded with pad_id.
struct ValueBatch {
  at::Tensor ids;                      // [R + 1, T]
  std::vector<int64_t> lengths;        // real tokens per row
  std::vector<int64_t> subject_last;   // the subject's last token, per row
  std::vector<int64_t> target_ids;     // [|t|]
  int64_t rewriting_rows = 0;          // R
  // True when each rewriting row's tokens up to its subject index equal those of the bare
  // template text, so the keys of this batch are the keys ROME computes (shared forward pass).
  bool keys_match_template_encoding = true;
};
ValueBatch build_value_batch(const Tokenizer& tokenizer, bool add_bos, const EditRequest& request,
                             const std::vector<std::string>& templates, const std::string& kl_prompt, int64_t pad_id,
                             c10::Device device);

// The optimised path's tokens per row and step: the longest span from a row's subject token
// (where δ enters) to its end.
int64_t recompute_window(const ValueBatch& batch);

// What one forward pass of the unedited model gives: keys and outputs at the subject_last positions
// of every row, the residual stream entering L (the optimisation never recomputes layers below L) and,
// with record_cache, the keys/values of layers >= L (the optimisation never recomputes positions
// before the subject either: δ cannot reach them through causal attention).
struct RewriteLayerInput {
  at::Tensor keys;             // [R + 1, F]
  at::Tensor outputs;          // [R + 1, D]
  at::Tensor hidden_entering;  // [R + 1, T, D]
  KVCache cache;               // layer L: [R + 1, H_kv, T, hd], layers > L: [R + 1, H_kv, P, hd] with P
                               // the latest subject index; empty without record_cache
};
RewriteLayerInput rewrite_layer_input(const CausalLM& model, const ValueBatch& batch, int64_t layer,
                                      bool record_cache = false);

enum class ForwardPath {
  Optimized,  // layers >= L only, logits at the target and KL positions only
  Reference,  // as the paper's code: every layer and the full vocabulary at every position, each step
};

struct ValueOptimization {
  at::Tensor target_init;  // [D] MLP output at the bare prompt's subject token
  at::Tensor delta;        // [D]
  at::Tensor v_star;       // [D] target_init + delta
  int64_t iterations = 0;  // forward passes run
  int64_t adam_steps = 0;
  std::vector<double> loss, nll, kl, weight_decay;  // per iteration
};

// The v* loss at one δ (ROME_REFERENCE.md, step 4), each term a scalar float32 tensor:
//   nll          = mean over the rewriting prompts of −Σ log p(target tokens) / |target|
//   kl           = kl_factor · KL(P_now ‖ P_init) at the KL prompt's subject position
//   weight_decay = v_weight_decay · ‖δ‖ / ‖target_init‖²  (the norm, not its square: the paper's code)
struct ValueLoss {
  at::Tensor total, nll, kl, weight_decay;
  at::Tensor kl_log_probs;  // [V] log P_now at the KL position, detached (P_init after the first iteration)
  at::Tensor terms() const;  // [4]: total, nll, kl, weight_decay, detached
};
// target_logits [R·|t|, V] at the positions that predict `labels` [R·|t|] (each row the |t| target
// ids); kl_logits [V]; kl_init [V] log P_init, or undefined on the first iteration (P_init = P_now).
ValueLoss value_loss(const at::Tensor& target_logits, const at::Tensor& labels, const at::Tensor& kl_logits,
                     const at::Tensor& kl_init, const at::Tensor& delta, const at::Tensor& target_init_norm,
                     const RomeHparams& hparams);

// δ projected into the ball of radius max_norm (clamp_norm_factor · ‖target_init‖), in place and
// without a host sync. A group's δ [G, D] with max_norm [G]: each row into its own ball.
void clamp_delta(at::Tensor& delta, const at::Tensor& max_norm);

// Adam on δ from 0 with the loss above, the last iteration taking no step; stops early once the
// loss is below early_stop_loss. NumericError when the loss becomes NaN or infinite.
ValueOptimization optimize_value(const CausalLM& model, const ValueBatch& batch, const RewriteLayerInput& layer_input,
                                 const RomeHparams& hparams, ForwardPath path = ForwardPath::Optimized);

}  // namespace rc
