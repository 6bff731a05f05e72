#pragma once
// `keys`: the keys behind the collapse, and the paper's first-token experiment.
//
// For every request: kᵘ (bare prompt), the prefixed keys (all templates) and C⁻¹k̄ (k̄ without
// statistics), with how far kᵘ lies from the prefixed cloud:
//   relative_distance = ‖kᵘ − k̄‖ / mean_i ‖k_i − k̄‖   (i over the prefixed templates T[1..])
// about 1 when kᵘ is a typical member of the cloud, large when it is an outlier.
//
// For subject-first requests, two explanations of the first-token anomaly are separated:
//   (i)  autoregressive self-interaction: the subject's first token attends only to itself;
//   (ii) position encoding: it sits at position 0.
// The bare prompt's key is measured
//   shifted_positions: position ids shifted by k, same tokens, no context     (position only)
//   real_prefix:       k real tokens (the end of each template's prefix text) before the bare
//                      prompt's own token ids                                   (position + context)
//   template_prefix:   the templated prompt as the templates tokenise it, cut to its last k prefix
//                      tokens                       (position + context + the templates' subject tokens)
// and, once per request, template_tokens: the templated prompt with its whole prefix cut off, so
// the subject's tokens are those of the templates but at the first position, without context.
// With byte-level BPE (GPT-2, GPT-J) the subject at the start of a text is a different token
// ("Leonardo") from the one every template has (" Leonardo"): a third cause the last two arms
// expose. For each arm,
//   fraction_closed = 1 − ‖k − k̄‖ / ‖kᵘ − k̄‖
// says how much of kᵘ's distance to k̄ the change removes (1: all of it, 0: none, < 0: farther).
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/analysis/check.h"

namespace rc {

class ProgressReporter;

struct KeyAnalysisOptions {
  std::vector<int64_t> prefix_tokens = {1, 2, 4, 8};  // k values of the position experiment
  int64_t max_batch_tokens = 8192;
  ProgressReporter* progress = nullptr;  // counts prompts through the model (the total is set here)
};

// kᵘ against the prefixed cloud.
struct CloudStats {
  double cos_unprefixed_prefixed = 0;  // cos(kᵘ, k̄)
  double unprefixed_key_norm = 0;      // ‖kᵘ‖
  double prefixed_key_norm = 0;        // ‖k̄‖
  double cloud_mean_key_norm = 0;      // mean ‖k_i‖, i ≥ 1
  double cloud_mean_cos = 0;           // mean cos(k_i, k̄), i ≥ 1
  double unprefixed_distance = 0;      // ‖kᵘ − k̄‖
  double cloud_mean_distance = 0;      // mean ‖k_i − k̄‖, i ≥ 1
  double relative_distance = 0;        // the ratio of the two above
  double cloud_share_closer = 0;       // share of the prefixed keys closer to k̄ than kᵘ (1: kᵘ is the farthest)
};

// One k of the position experiment for one subject-first request.
struct PositionProbe {
  int64_t prefix_tokens = 0;
  at::Tensor shifted_key;              // [F] bare prompt, position ids + k
  double shifted_distance = 0;         // ‖k_shifted − k̄‖
  double shifted_fraction_closed = 0;
  double shifted_cos = 0;              // cos(k_shifted, k̄)
  at::Tensor real_prefix_keys;         // [m, F] one per template whose prefix has ≥ k tokens (m may be 0)
  std::vector<int64_t> real_prefix_templates;  // their template indices
  double real_prefix_distance = 0;     // mean over those templates of ‖k_real − k̄‖
  double real_prefix_fraction_closed = 0;  // mean of the per-template fractions
  double real_prefix_cos = 0;          // mean cos(k_real, k̄)
  at::Tensor template_prefix_keys;     // [m', F] as real_prefix, tokenised as the templates are
  std::vector<int64_t> template_prefix_templates;
  double template_prefix_distance = 0;
  double template_prefix_fraction_closed = 0;
  double template_prefix_cos = 0;
};

struct RequestKeys : RequestIdentity {
  KeySet keys;
  at::Tensor left_direction;           // [F] C⁻¹k̄, or k̄ without statistics (float64)
  CloudStats stats;
  std::vector<PositionProbe> probes;   // subject-first requests only
  at::Tensor template_token_key;       // [F] subject-first only: the templates' tokens, no prefix (undefined if none fits)
  double template_token_fraction_closed = 0;
};

// A 2-D (or n-D) principal-component projection of the keys.
struct Pca {
  at::Tensor mean;                     // [F] float64
  at::Tensor components;               // [n, F] float64, unit rows, largest variance first
  std::vector<double> explained_variance, explained_variance_ratio;
  at::Tensor project(const at::Tensor& points) const;  // [..., F] -> [..., n]
};
// PCA of points [N, F] by Eigen's SelfAdjointEigenSolver on the covariance (on the N × N Gram
// matrix when F is much larger than N: same components, far cheaper). Component signs are fixed
// so that each component's largest coordinate is positive (reproducible figures).
Pca fit_pca(const at::Tensor& points, int64_t components = 2);

struct KeyAnalysis {
  std::vector<RequestKeys> requests;
  std::vector<std::string> templates;
  std::vector<int64_t> prefix_tokens;
  Pca pca;                             // fitted on the prefixed keys (T[1..]) of all requests
  int64_t forward_passes = 0;
  double seconds = 0;
};

KeyAnalysis analyze_keys(const LoadedModel& loaded, const EditConfig& config, const RequestSet& requests,
                         const KeyRunContext& context, const KeyAnalysisOptions& options = {});

// Per-request statistics, group summaries (subject first / later) and the PCA projection.
nlohmann::json to_json(const KeyAnalysis& analysis, const LoadedModel& loaded, const EditConfig& config,
                       const RequestSet& requests);
// .npz members (np.load-able): unprefixed_keys [R,F], prefixed_keys [R,N,F], prefixed_key_mean [R,F],
// c_inv_kbar [R,F], subject_first [R], subject_last_index [R], prefix_tokens [K],
// shifted_keys [R,K,F], real_prefix_key_mean [R,K,F], template_prefix_key_mean [R,K,F] and
// template_token_keys [R,F] (NaN where not measured), pca_mean [F],
// pca_components [2,F], context_templates (JSON text).
std::map<std::string, std::string> npz_members(const KeyAnalysis& analysis);
// The readable summary printed by the CLI.
std::string format_key_summary(const KeyAnalysis& analysis);

}  // namespace rc
