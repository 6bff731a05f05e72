#include "rome_collapse/rome/convergence.h"

#include <algorithm>
#include <cstdio>

namespace rc {
namespace {

nlohmann::json optional_number(const std::optional<double>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

std::string number_text(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.4g", value);
  return buffer;
}

}  // namespace

Convergence assess_convergence(const ValueOptimization& value, std::optional<double> efficacy,
                               std::optional<double> target_nll_before, std::optional<double> target_nll_after) {
  Convergence c;
  if (!value.loss.empty()) {
    c.v_loss_initial = value.loss.front();
    c.v_loss_final = value.loss.back();
    c.v_loss_max = *std::max_element(value.loss.begin(), value.loss.end());
    c.v_nll_initial = value.nll.front();
    c.v_nll_final = value.nll.back();
  }
  c.loss_rose = c.v_loss_final > c.v_loss_initial;
  c.efficacy = efficacy;
  c.target_nll_before = target_nll_before;
  c.target_nll_after = target_nll_after;
  c.nll_lowered = target_nll_before && target_nll_after && *target_nll_after < *target_nll_before;
  c.wrote_nothing = efficacy && *efficacy == 0 && !c.nll_lowered;
  if (c.wrote_nothing)
    c.warnings.push_back("the edit wrote nothing: efficacy 0 and the target's NLL did not fall (" +
                         number_text(*target_nll_before) + " before, " + number_text(*target_nll_after) + " after)");
  if (c.loss_rose)
    c.warnings.push_back("the v* optimisation diverged: its loss rose from " + number_text(c.v_loss_initial) + " to " +
                         number_text(c.v_loss_final) + " (peak " + number_text(c.v_loss_max) +
                         "); try a smaller v_lr or more v_num_grad_steps");
  return c;
}

nlohmann::json to_json(const Convergence& c) {
  return {{"took", c.took()},
          {"wrote_nothing", c.wrote_nothing},
          {"loss_rose", c.loss_rose},
          {"nll_lowered", c.nll_lowered},
          {"v_loss_initial", c.v_loss_initial},
          {"v_loss_final", c.v_loss_final},
          {"v_loss_max", c.v_loss_max},
          {"v_nll_initial", c.v_nll_initial},
          {"v_nll_final", c.v_nll_final},
          {"target_nll_before", optional_number(c.target_nll_before)},
          {"target_nll_after", optional_number(c.target_nll_after)},
          {"efficacy", optional_number(c.efficacy)},
          {"warnings", c.warnings}};
}

}  // namespace rc
