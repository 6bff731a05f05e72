#include "rome_collapse/eval/perplexity.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/progress.h"

namespace rc {

std::vector<std::vector<int64_t>> perplexity_token_ids(const Tokenizer& tokenizer, const std::vector<std::string>& texts,
                                                       int64_t max_positions) {
  std::vector<std::vector<int64_t>> ids;
  ids.reserve(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    std::vector<int64_t> tokens = tokenizer.encode(texts[i], /*add_bos=*/false);
    if (static_cast<int64_t>(tokens.size()) > max_positions) tokens.resize(max_positions);
    if (tokens.size() < 2)
      throw InputError("text " + std::to_string(i) + " has fewer than 2 tokens; perplexity is undefined for it");
    ids.push_back(std::move(tokens));
  }
  return ids;
}

PerplexitySummary perplexity(const CausalLM& model, const std::vector<std::vector<int64_t>>& token_ids,
                             int64_t batch_size, ProgressReporter* progress) {
  if (batch_size < 1) throw InputError("perplexity: batch size must be at least 1");
  at::NoGradGuard no_grad;
  const int64_t pad = model.config().eos_token_id.value_or(0);
  std::vector<double> per_text;
  for (size_t start = 0; start < token_ids.size(); start += batch_size) {
    size_t stop = std::min(token_ids.size(), start + static_cast<size_t>(batch_size));
    std::vector<std::vector<int64_t>> rows(token_ids.begin() + start, token_ids.begin() + stop);
    at::Tensor ids = pad_batch(rows, pad, model.device());  // [B, T]
    at::Tensor mask = at::zeros(ids.sizes(), at::kFloat);
    for (size_t r = 0; r < rows.size(); ++r) mask[r].slice(0, 0, rows[r].size()).fill_(1.0);
    mask = mask.to(model.device());
    at::Tensor logits = model.forward(ids).logits.to(at::kFloat);       // [B, T, V]
    at::Tensor log_probs = at::log_softmax(logits.slice(1, 0, -1), -1);  // predicts tokens 1..T-1
    at::Tensor targets = ids.slice(1, 1);
    at::Tensor nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1);  // [B, T-1]
    at::Tensor target_mask = mask.slice(1, 1);
    at::Tensor mean_nll = (nll * target_mask).sum(1) / target_mask.sum(1);
    at::Tensor ppl = at::exp(mean_nll).to(at::kDouble).cpu();
    for (int64_t r = 0; r < ppl.size(0); ++r) per_text.push_back(ppl[r].item<double>());
    if (progress) progress->update(static_cast<int64_t>(stop));
  }
  if (progress) progress->finish();
  return summarize_perplexities(std::move(per_text));
}

PerplexitySummary summarize_perplexities(std::vector<double> per_text) {
  PerplexitySummary summary;
  summary.per_text = std::move(per_text);
  if (summary.per_text.empty()) return summary;
  double sum = 0, log_sum = 0;
  for (double p : summary.per_text) {
    sum += p;
    log_sum += std::log(p);
  }
  const double n = static_cast<double>(summary.per_text.size());
  summary.mean = sum / n;
  summary.mean_log = log_sum / n;
  std::vector<double> sorted = summary.per_text;
  std::sort(sorted.begin(), sorted.end());
  size_t mid = sorted.size() / 2;
  summary.median = sorted.size() % 2 ? sorted[mid] : 0.5 * (sorted[mid - 1] + sorted[mid]);
  return summary;
}

nlohmann::json to_json(const PerplexitySummary& summary, bool include_per_text) {
  nlohmann::json out = {{"mean", summary.mean}, {"median", summary.median}, {"mean_log", summary.mean_log}};
  if (include_per_text) out["per_text"] = summary.per_text;
  return out;
}

}  // namespace rc
