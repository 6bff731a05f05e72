#pragma once
// Whether an edit took. A ROME edit can "succeed" numerically and still write nothing: the v*
// optimisation may diverge (its loss rises, e.g. a learning rate too large for the model's scale)
// or the rank-one update may not move the edited prompt. This judges an edit from its optimisation
// history and from the target's scores before and after the update, so that results, the command
// line and the batch tables can say so instead of presenting a failed edit as a result.
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "rome_collapse/rome/value.h"

namespace rc {

struct Convergence {
  // The v* optimisation (its own NLL: mean over context templates and target tokens).
  double v_loss_initial = 0, v_loss_final = 0, v_loss_max = 0;
  double v_nll_initial = 0, v_nll_final = 0;
  bool loss_rose = false;  // the final loss is above the initial one: the optimisation diverged
  // The edited model on the efficacy prompt (mean NLL per target token), when evaluated.
  std::optional<double> target_nll_before, target_nll_after, efficacy;
  bool nll_lowered = false;    // target_nll_after < target_nll_before
  bool wrote_nothing = false;  // efficacy 0 and the target's NLL not lower
  // Neither failure: a diverged optimisation's v* is not the edit ROME means, whatever it moved.
  bool took() const { return !wrote_nothing && !loss_rose; }
  std::vector<std::string> warnings;  // one readable sentence per problem (empty: the edit took)
};

// `efficacy` and the target NLLs are absent when the edit was not evaluated; then only the
// optimisation is judged.
Convergence assess_convergence(const ValueOptimization& value, std::optional<double> efficacy,
                               std::optional<double> target_nll_before, std::optional<double> target_nll_after);

// {"took", "wrote_nothing", "loss_rose", "nll_lowered", "v_loss_initial", "v_loss_final", "v_loss_max",
//  "v_nll_initial", "v_nll_final", "target_nll_before", "target_nll_after", "efficacy", "warnings"}
nlohmann::json to_json(const Convergence& convergence);

}  // namespace rc
