#pragma once
// The paper's evaluation code scores a target teacher-forced: prompt + " " + target is tokenised as
// one string, the prompt's own token count marks where the target starts, and at each target
// position the model's argmax and log-probability of the true next token are read.
#include <cstdint>
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

}  // namespace rc
