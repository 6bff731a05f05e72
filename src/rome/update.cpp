#include "rome_collapse/rome/update.h"

#include <ATen/ATen.h>

#include "rome_collapse/util/error.h"

namespace rc {

EditMethod parse_method(const std::string& name, const std::string& where) {
  if (name == "rome") return EditMethod::Rome;
  if (name == "c-rome") return EditMethod::CRome;
  if (name == "c-rome-prefix") return EditMethod::CRomePrefix;
  throw InputError(where + ": unknown method \"" + name + "\" (expected rome, c-rome or c-rome-prefix)");
}

std::string to_string(EditMethod method) {
  switch (method) {
    case EditMethod::Rome: return "rome";
    case EditMethod::CRome: return "c-rome";
    case EditMethod::CRomePrefix: return "c-rome-prefix";
  }
  return "?";
}

at::Tensor left_vector(const at::Tensor& prefixed_key_mean, const SecondMoment* second_moment, double ridge) {
  at::Tensor direction = second_moment ? solve_second_moment(*second_moment, prefixed_key_mean, ridge)
                                             .to(prefixed_key_mean.device())
                                       : prefixed_key_mean.to(at::kDouble);
  const double norm = direction.norm().item<double>();
  if (!(norm > 0) || !std::isfinite(norm)) throw NumericError("left vector: C^-1 k has norm " + std::to_string(norm));
  return (direction / norm).to(at::kFloat);
}

RankOneUpdate rank_one_update(EditMethod method, const KeySet& keys, const at::Tensor& left, const at::Tensor& v_star) {
  RankOneUpdate update;
  update.left = left;
  const bool prefixed = uses_prefixed_key(method);
  update.key = (prefixed ? keys.prefixed_key_mean : keys.unprefixed_key).to(at::kFloat);
  update.output = (prefixed ? keys.prefixed_output_mean : keys.unprefixed_output).to(at::kFloat);
  at::Tensor denominator = at::dot(update.key, left);
  at::Tensor numerator = v_star.to(at::kFloat) - update.output;
  update.right = numerator / denominator;
  update.denominator = denominator.item<double>();
  update.numerator_norm = numerator.norm().item<double>();
  update.update_norm = update.right.norm().item<double>() * left.norm().item<double>();
  if (!std::isfinite(update.update_norm))
    throw NumericError("rank-one update: ||delta W|| is not finite (denominator " + std::to_string(update.denominator) + ")");
  return update;
}

at::Tensor RankOneUpdate::delta_weight() const { return at::outer(right, left); }

}  // namespace rc
