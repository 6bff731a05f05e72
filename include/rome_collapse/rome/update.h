#pragma once
// The rank-one update  ΔW = v uᵀ  with  u = C⁻¹k̄/‖C⁻¹k̄‖  and  v = (v* − W k − b) / (k · u):
//   ROME   (the paper's code): k = kᵘ (unprefixed key), W k + b = the bare prompt's output
//   C-ROME:                    k = k̄ (prefixed key mean), W k + b = the mean prefixed output
// When kᵘ lies far from the prefixed keys, kᵘ·u nearly vanishes and ‖ΔW‖ explodes.
#include <string>

#include <ATen/core/Tensor.h>

#include "rome_collapse/rome/covariance.h"
#include "rome_collapse/rome/keys.h"

namespace rc {

enum class EditMethod { Rome, CRome, CRomePrefix };
EditMethod parse_method(const std::string& name, const std::string& where);  // "rome" | "c-rome" | "c-rome-prefix"
std::string to_string(EditMethod method);
inline bool uses_prefixed_key(EditMethod method) { return method != EditMethod::Rome; }

// u [F], unit norm: C⁻¹k̄ normalised, or k̄/‖k̄‖ without a second moment (C = I).
at::Tensor left_vector(const at::Tensor& prefixed_key_mean, const SecondMoment* second_moment, double ridge);

struct RankOneUpdate {
  at::Tensor left;           // u [F]
  at::Tensor right;          // v [D]
  at::Tensor key;            // the key in the denominator [F]
  at::Tensor output;         // the output subtracted from v* [D]
  double denominator = 0;    // key · u
  double numerator_norm = 0; // ‖v* − output‖
  double update_norm = 0;    // ‖ΔW‖_F = ‖v‖ (‖u‖ = 1)
  at::Tensor delta_weight() const;  // [D, F], the rewrite weight's layout
};
RankOneUpdate rank_one_update(EditMethod method, const KeySet& keys, const at::Tensor& left, const at::Tensor& v_star);

}  // namespace rc
