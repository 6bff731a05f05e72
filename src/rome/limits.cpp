#include "rome_collapse/rome/limits.h"

#include <cmath>

#include "rome_collapse/rome/templates.h"
#include "rome_collapse/util/error.h"

namespace rc {
namespace {

std::string number_text(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

void check_factor(double value, const std::string& where, bool positive) {
  if (positive ? !(value > 0) : !(value >= 0))
    throw InputError(where + ": " + number_text(value) + " must be " + (positive ? "positive" : "non-negative") +
                     (positive ? " (0 would make the edit a silent no-op)" : ""));
  if (value > limits::kMaxFactor)
    throw InputError(where + ": " + number_text(value) + " is above the bound of " + number_text(limits::kMaxFactor));
}

void check_count(int64_t value, int64_t low, int64_t high, const std::string& where) {
  if (value < low || value > high)
    throw InputError(where + ": " + std::to_string(value) + " is outside [" + std::to_string(low) + ", " +
                     std::to_string(high) + "] (the documented bound)");
}

}  // namespace

void check_hparams(const RomeHparams& hp, const std::string& where) {
  check_count(hp.v_num_grad_steps, 1, limits::kMaxGradSteps, where + ".v_num_grad_steps");
  check_factor(hp.v_lr, where + ".v_lr", true);
  check_factor(hp.clamp_norm_factor, where + ".clamp_norm_factor", true);
  check_factor(hp.v_weight_decay, where + ".v_weight_decay", false);
  check_factor(hp.kl_factor, where + ".kl_factor", false);
  check_factor(hp.mom2_ridge, where + ".mom2_ridge", false);
  if (!(hp.early_stop_loss >= 0)) throw InputError(where + ".early_stop_loss: must be non-negative");
  check_text_size(hp.kl_prompt, where + ".kl_prompt");
}

void check_template_spec(const TemplateSpec& spec, const std::string& where) {
  if (!spec.generate) {
    check_count(static_cast<int64_t>(spec.fixed.size()), 1, limits::kMaxTemplates, where + ": number of templates");
    for (size_t i = 0; i < spec.fixed.size(); ++i) check_text_size(spec.fixed[i], where + "[" + std::to_string(i) + "]");
    return;
  }
  const TemplateGeneration& g = spec.generation;
  const std::string gwhere = where + ".generate";
  check_count(static_cast<int64_t>(g.seed_words.size()), 1, limits::kMaxSeedWords, gwhere + ".seed_words: number of words");
  for (size_t i = 0; i < g.seed_words.size(); ++i)
    check_text_size(g.seed_words[i], gwhere + ".seed_words[" + std::to_string(i) + "]");
  check_count(g.top_k, 1, limits::kMaxTopK, gwhere + ".top_k");
  int64_t total = 1;  // "{}" itself
  for (size_t i = 0; i < g.lengths.size(); ++i) {
    const std::string lwhere = gwhere + ".lengths[" + std::to_string(i) + "]";
    check_count(g.lengths[i].first, 1, limits::kMaxTemplateTokens, lwhere + ": length in tokens");
    check_count(g.lengths[i].second, 0, limits::kMaxTemplates, lwhere + ": number of samples");
    total += g.lengths[i].second;
  }
  check_count(total, 1, limits::kMaxTemplates, gwhere + ": number of templates (1 + the samples)");
}

}  // namespace rc
