#pragma once
// The paper's evaluation code scores a target teacher-forced: prompt + " " + target is tokenised as
// one string, the prompt's own token count marks where the target starts, and at each target
// position the model's argmax and log-probability of the true next token are read.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/text/tokenizer.h"

namespace rc {

struct TargetScore {
  double mean_logprob = 0;             // mean log p(target token | prefix) over target tokens
  double token_accuracy = 0;           // share of target tokens that are the argmax
  std::vector<int64_t> target_tokens;  // as tokenised inside the whole string
  std::vector<int64_t> predicted;      // argmax at each target position
};

TargetScore score_target(const CausalLM& model, const Tokenizer& tokenizer, bool add_bos, const std::string& prompt,
                         const std::string& target);

// Hidden states entering `layer` of the token sequences scored so far ([T, D] per sequence, keyed by its token
// ids, in the model's dtype on its device), so that scoring the same sequences again after an edit of a layer
// >= `layer` starts there. Valid while the model's layers below `layer` do not change (ROME edits one layer, so
// the whole of a sequential run qualifies); clear() otherwise. Sequences beyond budget_bytes are not kept.
// layer 0: nothing is kept (every scoring runs in full). Belongs to the first model it is used with.
class ScoringCache {
 public:
  static constexpr int64_t kDefaultBudgetBytes = int64_t(1) << 30;  // 1 GiB

  explicit ScoringCache(int64_t layer, int64_t budget_bytes = kDefaultBudgetBytes);
  int64_t layer() const { return layer_; }
  int64_t sequences() const { return static_cast<int64_t>(hidden_.size()); }
  int64_t bytes() const { return bytes_; }
  int64_t reused() const { return reused_; }  // sequences started at `layer` from the cache, over all calls
  void clear();

  // For score_targets: the cached hidden states of `ids` (nullptr: none), and keeping new ones.
  const at::Tensor* find(const std::vector<int64_t>& ids);
  void keep(const std::vector<int64_t>& ids, const at::Tensor& hidden);  // [T, D]; ignored beyond the budget
  // std::invalid_argument for another model than the first one, or a layer it does not have.
  void check_model(const CausalLM& model);

 private:
  int64_t layer_, budget_bytes_, bytes_ = 0, reused_ = 0;
  std::map<std::vector<int64_t>, at::Tensor> hidden_;
  const CausalLM* model_ = nullptr;
};

struct PromptTarget {
  std::string prompt, target;
};
// score_target for several pairs in one right-padded pass (logits only at the target positions), tokenised
// exactly as score_target does (the same InputError for the first pair, in order, whose target adds no tokens).
// With a cache: sequences it holds start at cache->layer(); the others run layers below it first and are kept.
// Equal to score_target pair by pair within float rounding.
std::vector<TargetScore> score_targets(const CausalLM& model, const Tokenizer& tokenizer, bool add_bos,
                                       const std::vector<PromptTarget>& pairs, ScoringCache* cache = nullptr);

}  // namespace rc
