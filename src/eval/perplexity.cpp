#include "rome_collapse/eval/perplexity.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

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

PerplexityReuse::PerplexityReuse(std::vector<std::vector<int64_t>> token_ids, int64_t batch_size, int64_t layer,
                                 int64_t budget_bytes)
    : token_ids_(std::move(token_ids)), batch_size_(batch_size), layer_(layer), budget_bytes_(budget_bytes) {
  if (batch_size < 1) throw InputError("perplexity: batch size must be at least 1");
  if (layer < 0) throw std::invalid_argument("PerplexityReuse: negative layer " + std::to_string(layer));
  for (size_t i = 0; i < token_ids_.size(); ++i)
    if (token_ids_[i].size() < 2)
      throw InputError("text " + std::to_string(i) + " has fewer than 2 tokens; perplexity is undefined for it");
}

int64_t PerplexityReuse::cached_chunk_count() const {
  int64_t n = 0;
  for (const Chunk& chunk : chunks_) n += chunk.hidden.defined();
  return n;
}

// Chunks of texts of similar length, with their padded ids and predicting positions on the model's device.
void PerplexityReuse::prepare(const CausalLM& model) {
  if (layer_ >= model.config().n_layers)
    throw std::invalid_argument("PerplexityReuse: layer " + std::to_string(layer_) + " of a model with " +
                                std::to_string(model.config().n_layers) + " layers");
  const int64_t pad = model.config().eos_token_id.value_or(0);
  std::vector<int64_t> order(token_ids_.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return token_ids_[a].size() < token_ids_[b].size(); });
  for (size_t start = 0; start < order.size(); start += static_cast<size_t>(batch_size_)) {
    Chunk chunk;
    chunk.texts.assign(order.begin() + start, order.begin() + std::min(order.size(), start + static_cast<size_t>(batch_size_)));
    std::vector<std::vector<int64_t>> rows;
    std::vector<TokenPosition> predicting;
    std::vector<int64_t> targets;
    std::vector<float> counts;
    for (int64_t text : chunk.texts) {
      const auto& ids = token_ids_[text];
      for (size_t p = 0; p + 1 < ids.size(); ++p) {
        predicting.push_back({static_cast<int64_t>(rows.size()), static_cast<int64_t>(p)});
        targets.push_back(ids[p + 1]);
      }
      counts.push_back(static_cast<float>(ids.size() - 1));
      rows.push_back(ids);
    }
    chunk.ids = pad_batch(rows, pad, model.device());
    chunk.predicting = make_position_index(predicting, model.device());
    chunk.targets = at::tensor(targets, at::kLong).to(model.device());
    chunk.counts = at::tensor(counts, at::kFloat).to(model.device());
    chunks_.push_back(std::move(chunk));
  }
  model_ = &model;
}

namespace {

// Per-row perplexities of a chunk from the logits at its predicting positions, with perplexity()'s arithmetic:
// float32 log-softmax, NLLs laid out [B, T-1] (zeros where perplexity() masks), summed per row, divided, exp.
at::Tensor chunk_perplexities(const at::Tensor& logits, const at::Tensor& ids, const PositionIndex& predicting,
                              const at::Tensor& targets, const at::Tensor& counts) {
  at::Tensor log_probs = at::log_softmax(logits.to(at::kFloat), -1);                   // [N, V]
  at::Tensor nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1);           // [N]
  at::Tensor laid_out = at::zeros({ids.size(0), ids.size(1) - 1}, nll.options());      // [B, T-1]
  laid_out.index_put_({predicting.rows, predicting.positions}, nll);
  return at::exp(laid_out.sum(1) / counts).to(at::kDouble).cpu();                      // [B]
}

}  // namespace

PerplexitySummary perplexity_reusing(const CausalLM& model, PerplexityReuse& reuse, ProgressReporter* progress) {
  if (!reuse.model_) reuse.prepare(model);
  if (reuse.model_ != &model)
    throw std::invalid_argument("perplexity_reusing: the cache was prepared for another model");
  at::NoGradGuard no_grad;
  std::vector<double> per_text(reuse.token_ids_.size());
  int64_t done = 0;
  for (PerplexityReuse::Chunk& chunk : reuse.chunks_) {
    ForwardOptions options;
    options.logits_index = chunk.predicting;
    if (chunk.hidden.defined()) {
      options.start_layer = reuse.layer_;
      options.initial_hidden = chunk.hidden;
    } else if (!reuse.primed_ && reuse.layer_ > 0) {
      options.keep_hidden_entering = reuse.layer_;
    }
    ForwardOutput out = model.forward(chunk.ids, options);
    if (out.hidden_entering.defined()) {
      const int64_t bytes = out.hidden_entering.numel() * out.hidden_entering.element_size();
      if (reuse.cached_bytes_ + bytes <= reuse.budget_bytes_) {
        chunk.hidden = out.hidden_entering.contiguous();
        reuse.cached_bytes_ += bytes;
      }
    }
    at::Tensor ppl = chunk_perplexities(out.logits, chunk.ids, chunk.predicting, chunk.targets, chunk.counts);
    const double* values = ppl.data_ptr<double>();
    for (size_t r = 0; r < chunk.texts.size(); ++r) per_text[chunk.texts[r]] = values[r];
    done += static_cast<int64_t>(chunk.texts.size());
    if (progress) progress->update(done);
  }
  reuse.primed_ = true;
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
