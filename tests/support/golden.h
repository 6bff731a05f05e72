#pragma once
// Access to ../shared/reference/golden_reference.json and tensor comparison with printed
// max differences (llm.c style: show how far off, not just pass/fail).
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/test_support.h"

namespace rc {
class CausalLM;
}

namespace rc::test {

// Parsed once per process.
const nlohmann::json& golden_reference();
// "gpt2" -> shared/reference/tiny-gpt2, "llama" -> tiny-llama, "gptj" -> tiny-gptj
std::string reference_model_dir(const std::string& arch);

at::Tensor json_to_tensor(const nlohmann::json& values);  // nested lists -> float64 tensor

// max |a - b| <= atol
inline ::testing::AssertionResult all_close_abs(const at::Tensor& actual, const at::Tensor& expected, double atol,
                                                const std::string& what) {
  at::Tensor a = actual.to(at::kDouble).cpu().reshape(-1), e = expected.to(at::kDouble).cpu().reshape(-1);
  if (a.numel() != e.numel())
    return ::testing::AssertionFailure() << what << ": size " << a.numel() << " vs expected " << e.numel();
  double max_diff = (a - e).abs().max().item<double>();
  if (max_diff <= atol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": max |diff| " << max_diff << " > " << atol
                                       << " (first actual " << a[0].item<double>() << ", expected "
                                       << e[0].item<double>() << ")";
}

// max |a - b| / max(|b|_inf, tiny) <= rtol  (relative to the vector's scale)
inline ::testing::AssertionResult all_close_rel(const at::Tensor& actual, const at::Tensor& expected, double rtol,
                                                const std::string& what) {
  at::Tensor a = actual.to(at::kDouble).cpu().reshape(-1), e = expected.to(at::kDouble).cpu().reshape(-1);
  if (a.numel() != e.numel())
    return ::testing::AssertionFailure() << what << ": size " << a.numel() << " vs expected " << e.numel();
  double scale = std::max(e.abs().max().item<double>(), 1e-12);
  double rel = (a - e).abs().max().item<double>() / scale;
  if (rel <= rtol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": max relative diff " << rel << " > " << rtol;
}

inline ::testing::AssertionResult scalar_close_rel(double actual, double expected, double rtol, const std::string& what) {
  double rel = std::abs(actual - expected) / std::max(std::abs(expected), 1e-12);
  if (rel <= rtol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << actual << " vs expected " << expected << " (relative diff "
                                       << rel << " > " << rtol << ")";
}

// ROME's optimisation recomputes each row from its own start (ragged windows, left-aligned, with
// per-row positions and each row's cache masked from that start on). Expects, for every row r of
// `rows` padded into one batch, that recomputing it from position starts[r] (< past) on, entering
// layer `start_layer` with the full pass's hidden states and the first `past` cached positions, gives
// the full forward pass's logits there (atol 1e-5). `what` names the model in failures.
void expect_ragged_rows_match_full_pass(const CausalLM& model, const std::vector<std::vector<int64_t>>& rows,
                                        const std::vector<int64_t>& starts, int64_t start_layer, int64_t past,
                                        const std::string& what);

}  // namespace rc::test
