#pragma once
// Autoregressive generation: greedy, or top-k sampling over the renormalised top-k
// probabilities (no temperature) with a seeded generator, as ROME's template generator samples.
#include <cstdint>
#include <optional>
#include <vector>

#include "rome_collapse/model/causal_lm.h"

namespace rc {

struct GenerationOptions {
  int64_t max_new_tokens = 20;
  int64_t top_k = 0;                      // 0: greedy
  uint64_t seed = 0;                      // used with top_k > 0
  std::vector<int64_t> stop_ids;          // generation ends after producing one of these (not returned)
};

// Returns only the new tokens. `prompt` must hold at least one token.
std::vector<int64_t> generate(const CausalLM& model, const std::vector<int64_t>& prompt,
                              const GenerationOptions& options);

}  // namespace rc
