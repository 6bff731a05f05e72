#pragma once
// The paper's perplexity: per text exp(mean next-token NLL), no start token, right-padded batches,
// float32 log-softmax; the arithmetic mean over texts is the headline number. The median and
// the mean log-perplexity are reported beside it because one collapsed text dominates the mean.
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

PerplexitySummary summarize_perplexities(std::vector<double> per_text);
nlohmann::json to_json(const PerplexitySummary& summary, bool include_per_text);

}  // namespace rc
