#pragma once
// The pieces of v*'s optimisation that one request (value.cpp) and a group of requests
// (value_group.cpp) share: where the loss reads the targets, and the ragged window pass.
// Private to the rome layer.
#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/rome/hparams.h"
#include "rome_collapse/rome/value.h"

namespace rc::value_detail {

// Where the loss reads the target: logits at the last |t| real positions of each rewriting row
// predict the target tokens (labels: the target ids, row after row).
struct TargetTokens {
  std::vector<TokenPosition> positions;  // in the padded batch
  at::Tensor labels;                     // [R*|t|]
};
TargetTokens target_tokens(const ValueBatch& batch, c10::Device device);

// The optimisation loop's forward pass. Everything that does not change between iterations (ids,
// cached hidden states, index tensors) is built once.
struct ForwardPass {
  at::Tensor ids;                      // [R + 1, T] (reference) or [R + 1, W] (ragged windows)
  ForwardOptions options;              // delta mask, logits positions, start layer ...
  PositionIndex targets, kl;           // reference path: where the loss reads the full logits
  PositionIndex hidden_targets;        // ragged, v_loss_layer < last layer: targets in the hidden states
  std::shared_ptr<KVCache> past;       // ragged: the rows' cached positions before their windows
};

// The ragged window pass over the rows of `batch` (its ids, lengths and subject_last; `layer_input`
// holds their hidden states entering L and cache). Logits rows: the targets (when the loss reads
// the last layer), then one per entry of kl_rows (each such row's subject position).
ForwardPass window_pass(const ValueBatch& batch, const RewriteLayerInput& layer_input, const TargetTokens& targets,
                        const RomeHparams& hparams, bool loss_at_last_layer, c10::Device device,
                        const std::vector<int64_t>& kl_rows);

// The NumericError text for a non-finite loss at an iteration.
std::string non_finite_loss_message(double loss_value, int64_t iteration);

}  // namespace rc::value_detail
