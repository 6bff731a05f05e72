#pragma once
// v* of several independent requests optimised together (issue 19): their rows share one unedited
// forward pass up to layer L and, per iteration, one ragged window pass, so that a step fills the
// hardware that a single request's ~100 tokens leave idle. Each request keeps its own δ, Adam
// moments, clamp, P_init and early stop, and its result equals optimize_value's for it alone up to
// float rounding (tests/test_value_group.cpp). Sequential editing cannot use this: each edit there
// starts from the previous one's weights.
#include <cstdint>
#include <vector>

#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/rome/hparams.h"
#include "rome_collapse/rome/value.h"

namespace rc {

// One unedited forward pass over all the requests' rows (their ValueBatches concatenated row-wise,
// right-padded to the longest).
struct GroupedLayerInput {
  // Per request: keys [R_i + 1, F] and outputs [R_i + 1, D], as rewrite_layer_input(model,
  // batches[i], layer) gives them (up to float rounding); hidden_entering and cache stay empty
  // (they live in `merged`).
  std::vector<RewriteLayerInput> requests;
  ValueBatch rows;                   // the concatenated rows: ids [N, T], lengths, subject_last (target_ids unused)
  RewriteLayerInput merged;          // keys, outputs, hidden states entering L and the cache of layers >= L of `rows`
  std::vector<int64_t> row_offsets;  // request i's rows are row_offsets[i] .. row_offsets[i + 1] - 1 (size G + 1)
  int64_t layer = -1;
};
GroupedLayerInput rewrite_layer_inputs(const CausalLM& model, const std::vector<ValueBatch>& batches, int64_t layer);

// v* of every request, optimised together with the optimised (ragged window) path: per iteration
// one window pass over the rows of the requests still running; the loss is the sum over requests of
// value_loss (so each request's gradient is its own); Adam, the clamp and the early stop per request.
// A request stops exactly where optimize_value would stop it (loss < early_stop_loss, or the last
// iteration: no step), and its rows leave the pass. Eager only: no CUDA-graph replay for a group
// (its batch shrinks as requests stop). A non-finite loss or v* is a NumericError naming the
// request ("request 3 of the group: ...").
std::vector<ValueOptimization> optimize_values(const CausalLM& model, const std::vector<ValueBatch>& batches,
                                               const GroupedLayerInput& input, const RomeHparams& hparams);

}  // namespace rc
