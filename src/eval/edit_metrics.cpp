#include "rome_collapse/eval/edit_metrics.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <stdexcept>

#include "rome_collapse/util/error.h"

namespace rc {

namespace {

// One pair as score_target tokenises it: the whole string's ids and where the target starts.
struct TokenisedPair {
  std::vector<int64_t> ids;
  int64_t prompt_length = 0;
  int64_t row = 0;  // its row in the padded batch (identical sequences share one)
};

TokenisedPair tokenise_pair(const Tokenizer& tokenizer, bool add_bos, const std::string& prompt,
                            const std::string& target) {
  TokenisedPair pair;
  pair.prompt_length = static_cast<int64_t>(tokenizer.encode(prompt, add_bos).size());
  pair.ids = tokenizer.encode(prompt + " " + target, add_bos);
  if (pair.prompt_length < 1 || static_cast<int64_t>(pair.ids.size()) <= pair.prompt_length)
    throw InputError("target \"" + target + "\" adds no tokens after the prompt \"" + prompt + "\"");
  return pair;
}

// The residual stream entering `layer` for each of `rows` (right-padded into one pass through the layers below it),
// from the cache where it holds the sequence; new ones are kept in it. [B, T, D] padded with zeros: padding follows
// every real position, so the causal mask keeps it out of them (zeros keep it finite).
at::Tensor hidden_entering(const CausalLM& model, const std::vector<std::vector<int64_t>>& rows, ScoringCache& cache,
                           int64_t pad) {
  const int64_t layer = cache.layer();
  std::vector<at::Tensor> per_row(rows.size());
  std::vector<std::vector<int64_t>> missing;
  std::vector<size_t> missing_rows;
  for (size_t r = 0; r < rows.size(); ++r) {
    if (const at::Tensor* found = cache.find(rows[r])) per_row[r] = *found;
    else {
      missing.push_back(rows[r]);
      missing_rows.push_back(r);
    }
  }
  if (!missing.empty()) {
    ForwardOptions lower;
    lower.stop_after_layer = layer - 1;
    const at::Tensor computed = model.forward(pad_batch(missing, pad, model.device()), lower).hidden_after_stop;
    for (size_t m = 0; m < missing.size(); ++m) {
      per_row[missing_rows[m]] = computed[m].slice(0, 0, static_cast<int64_t>(missing[m].size())).clone();
      cache.keep(missing[m], per_row[missing_rows[m]]);
    }
  }
  int64_t longest = 0;
  for (const auto& row : rows) longest = std::max(longest, static_cast<int64_t>(row.size()));
  at::Tensor hidden = at::zeros({static_cast<int64_t>(rows.size()), longest, per_row.front().size(-1)},
                                per_row.front().options());
  for (size_t r = 0; r < rows.size(); ++r) hidden[r].slice(0, 0, per_row[r].size(0)).copy_(per_row[r]);
  return hidden;
}

}  // namespace

ScoringCache::ScoringCache(int64_t layer, int64_t budget_bytes) : layer_(layer), budget_bytes_(budget_bytes) {
  if (layer < 0) throw std::invalid_argument("ScoringCache: negative layer " + std::to_string(layer));
}

void ScoringCache::clear() {
  hidden_.clear();
  bytes_ = 0;
}

const at::Tensor* ScoringCache::find(const std::vector<int64_t>& ids) {
  const auto found = hidden_.find(ids);
  if (found == hidden_.end()) return nullptr;
  ++reused_;
  return &found->second;
}

void ScoringCache::keep(const std::vector<int64_t>& ids, const at::Tensor& hidden) {
  const int64_t size = hidden.numel() * hidden.element_size();
  if (bytes_ + size > budget_bytes_ || hidden_.count(ids)) return;
  hidden_.emplace(ids, hidden);
  bytes_ += size;
}

void ScoringCache::check_model(const CausalLM& model) {
  if (!model_) {
    if (layer_ >= model.config().n_layers)
      throw std::invalid_argument("ScoringCache: layer " + std::to_string(layer_) + " of a model with " +
                                  std::to_string(model.config().n_layers) + " layers");
    model_ = &model;
  }
  if (model_ != &model) throw std::invalid_argument("ScoringCache: used with another model than its first");
}

std::vector<TargetScore> score_targets(const CausalLM& model, const Tokenizer& tokenizer, bool add_bos,
                                       const std::vector<PromptTarget>& pairs, ScoringCache* cache) {
  if (pairs.empty()) return {};
  at::NoGradGuard no_grad;
  if (cache) cache->check_model(model);
  std::vector<TokenisedPair> tokenised;
  std::map<std::vector<int64_t>, int64_t> row_of;
  std::vector<std::vector<int64_t>> rows;
  std::vector<TokenPosition> positions;
  std::vector<int64_t> targets;  // the true next token at each position
  for (const PromptTarget& pair : pairs) {
    TokenisedPair t = tokenise_pair(tokenizer, add_bos, pair.prompt, pair.target);
    const auto inserted = row_of.emplace(t.ids, static_cast<int64_t>(rows.size()));
    if (inserted.second) rows.push_back(t.ids);
    t.row = inserted.first->second;
    for (int64_t p = t.prompt_length - 1; p + 1 < static_cast<int64_t>(t.ids.size()); ++p) {
      positions.push_back({t.row, p});
      targets.push_back(t.ids[p + 1]);
    }
    tokenised.push_back(std::move(t));
  }
  const int64_t pad = model.config().eos_token_id.value_or(0);
  ForwardOptions options;
  options.logits_index = make_position_index(positions, model.device());
  if (cache && cache->layer() > 0) {
    options.start_layer = cache->layer();
    options.initial_hidden = hidden_entering(model, rows, *cache, pad);
  }
  const at::Tensor log_probs =
      at::log_softmax(model.forward(pad_batch(rows, pad, model.device()), options).logits.to(at::kFloat), -1);  // [N, V]
  const at::Tensor predicted = log_probs.argmax(-1).cpu();  // [N]
  const at::Tensor chosen =
      log_probs.gather(-1, at::tensor(targets, at::kLong).to(model.device()).unsqueeze(-1)).squeeze(-1).to(at::kDouble).cpu();
  const int64_t* predicted_at = predicted.data_ptr<int64_t>();
  const double* chosen_at = chosen.data_ptr<double>();
  std::vector<TargetScore> scores;
  int64_t n = 0;
  for (const TokenisedPair& t : tokenised) {
    TargetScore score;
    double sum = 0;
    int64_t correct = 0;
    for (size_t j = static_cast<size_t>(t.prompt_length); j < t.ids.size(); ++j, ++n) {
      score.target_tokens.push_back(t.ids[j]);
      score.predicted.push_back(predicted_at[n]);
      sum += chosen_at[n];
      correct += score.predicted.back() == t.ids[j];
    }
    const double count = static_cast<double>(score.target_tokens.size());
    score.mean_logprob = sum / count;
    score.token_accuracy = static_cast<double>(correct) / count;
    scores.push_back(std::move(score));
  }
  return scores;
}

TargetScore score_target(const CausalLM& model, const Tokenizer& tokenizer, bool add_bos, const std::string& prompt,
                         const std::string& target) {
  at::NoGradGuard no_grad;
  const std::vector<int64_t> prompt_ids = tokenizer.encode(prompt, add_bos);
  const std::vector<int64_t> ids = tokenizer.encode(prompt + " " + target, add_bos);
  const int64_t prompt_length = static_cast<int64_t>(prompt_ids.size());
  const int64_t total = static_cast<int64_t>(ids.size());
  if (prompt_length < 1 || total <= prompt_length)
    throw InputError("target \"" + target + "\" adds no tokens after the prompt \"" + prompt + "\"");
  ForwardOptions options;
  for (int64_t position = prompt_length - 1; position < total - 1; ++position) options.logits_at.push_back({0, position});
  at::Tensor log_probs =
      at::log_softmax(model.forward(at::tensor(ids, at::kLong).unsqueeze(0).to(model.device()), options).logits.to(at::kFloat),
                      -1).cpu();  // [|t|, V]
  TargetScore score;
  double sum = 0;
  int64_t correct = 0;
  for (int64_t j = 0; j < log_probs.size(0); ++j) {
    const int64_t token = ids[prompt_length + j];
    const int64_t predicted = log_probs[j].argmax().item<int64_t>();
    score.target_tokens.push_back(token);
    score.predicted.push_back(predicted);
    sum += log_probs[j][token].item<double>();
    correct += predicted == token;
  }
  score.mean_logprob = sum / double(log_probs.size(0));
  score.token_accuracy = double(correct) / double(log_probs.size(0));
  return score;
}

}  // namespace rc
