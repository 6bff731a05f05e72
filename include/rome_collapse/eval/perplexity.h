#pragma once
// The paper's perplexity: per text exp(mean next-token NLL), no start token, right-padded batches,
// float32 log-softmax; the arithmetic mean over texts is the headline number. The median and
// the mean log-perplexity are reported beside it because one collapsed text dominates the mean.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/text/tokenizer.h"

namespace rc {

class ProgressReporter;

struct PerplexitySummary {
  double mean = 0, median = 0, mean_log = 0;
  std::vector<double> per_text;
};

// Token ids for perplexity: no BOS, cut at the model's context.
std::vector<std::vector<int64_t>> perplexity_token_ids(const Tokenizer& tokenizer, const std::vector<std::string>& texts,
                                                       int64_t max_positions);

PerplexitySummary perplexity(const CausalLM& model, const std::vector<std::vector<int64_t>>& token_ids,
                             int64_t batch_size = 10, ProgressReporter* progress = nullptr);

// Perplexity texts prepared for many passes over models that differ only from `layer` up (an edit of layer >= `layer`
// leaves the residual stream entering `layer` unchanged for every text):
//  - chunks of batch_size texts grouped by token count (stable sort), which cuts padding; a text's perplexity
//    does not depend on its chunk beyond float rounding (right padding never reaches real positions);
//  - logits only at the positions that predict a next token, not [B, T, V] over padding;
//  - after the first pass, the residual stream entering `layer` ([B, T, D] in the model's dtype, on its device)
//    of every chunk that fits in budget_bytes, taken in chunk order; the other chunks run in full every time.
// layer 0: nothing to reuse (every pass in full). The cache belongs to the first model it is used with.
class PerplexityReuse {
 public:
  static constexpr int64_t kDefaultBudgetBytes = int64_t(2) << 30;  // 2 GiB

  // InputError for batch_size < 1 or a text with fewer than 2 tokens (as perplexity_token_ids words it).
  PerplexityReuse(std::vector<std::vector<int64_t>> token_ids, int64_t batch_size, int64_t layer,
                  int64_t budget_bytes = kDefaultBudgetBytes);

  int64_t layer() const { return layer_; }
  int64_t chunk_count() const { return static_cast<int64_t>(chunks_.size()); }
  int64_t cached_chunk_count() const;
  int64_t cached_bytes() const { return cached_bytes_; }  // hidden states held
  bool primed() const { return primed_; }                 // the first (recording) pass is done

 private:
  struct Chunk {
    std::vector<int64_t> texts;     // indices into the original order
    at::Tensor ids;                 // [B, T] right-padded, on the model's device
    PositionIndex predicting;       // (row, position) of every position that predicts a next token: N pairs
    at::Tensor targets;             // [N] the token each of them predicts
    at::Tensor counts;              // [B] float32 number of predicted tokens per row
    at::Tensor hidden;              // [B, T, D] entering layer_, or undefined (not cached)
  };
  friend PerplexitySummary perplexity_reusing(const CausalLM&, PerplexityReuse&, ProgressReporter*);
  void prepare(const CausalLM& model);

  std::vector<std::vector<int64_t>> token_ids_;
  int64_t batch_size_, layer_, budget_bytes_;
  std::vector<Chunk> chunks_;
  int64_t cached_bytes_ = 0;
  bool primed_ = false;
  const CausalLM* model_ = nullptr;
};

// perplexity() through a PerplexityReuse: the first call runs every chunk in full and records the hidden states
// entering reuse.layer(); later calls start each cached chunk there. per_text in the original text order: the
// summary equals perplexity()'s on the same model within float rounding. std::invalid_argument when called with
// another model than the first call's, or a layer the model does not have.
PerplexitySummary perplexity_reusing(const CausalLM& model, PerplexityReuse& reuse,
                                     ProgressReporter* progress = nullptr);

PerplexitySummary summarize_perplexities(std::vector<double> per_text);
nlohmann::json to_json(const PerplexitySummary& summary, bool include_per_text);

}  // namespace rc
