// The edit's steps one by one, each against its formula written out here (small random tensors or
// hand-made numbers, no model): the left vector with and without C, the rank-one update and its
// ROME / C-ROME denominator, the v* loss's terms, the clamp, and Adam against torch.optim.Adam's
// update rule.
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "rome_collapse/rome/adam.h"
#include "rome_collapse/rome/covariance.h"
#include "rome_collapse/rome/update.h"
#include "rome_collapse/rome/value.h"
#include "rome_collapse/util/error.h"
#include "support/golden.h"

namespace rc {
namespace {

constexpr int64_t kF = 6, kD = 4, kTemplates = 3;

at::Tensor random_double(std::vector<int64_t> sizes) { return at::randn(sizes, at::kDouble); }

// Keys of kTemplates templates; kᵘ deliberately far from k̄ so that the two denominators differ.
KeySet random_keys() {
  KeySet keys;
  keys.prefixed_keys = at::randn({kTemplates, kF}, at::kFloat);
  keys.prefixed_outputs = at::randn({kTemplates, kD}, at::kFloat);
  keys.prefixed_key_mean = keys.prefixed_keys.mean(0);
  keys.prefixed_output_mean = keys.prefixed_outputs.mean(0);
  keys.unprefixed_key = at::randn({kF}, at::kFloat);
  keys.unprefixed_output = at::randn({kD}, at::kFloat);
  return keys;
}

// A well-conditioned C = mom2 / count from 50 random keys.
SecondMoment random_second_moment() {
  SecondMoment moment;
  const at::Tensor samples = random_double({50, kF});
  moment.mom2 = samples.t().matmul(samples);  // Σ k kᵀ
  moment.count = 50;
  moment.source = "test-moment";
  return moment;
}

// C⁻¹ k by a direct dense solve (not the Cholesky factor under test), C = mom2/count + ridge·mean(diag C)·I.
at::Tensor direct_solve(const SecondMoment& moment, const at::Tensor& key, double ridge) {
  at::Tensor c = moment.mom2 / double(moment.count);
  c = c + ridge * c.diagonal().mean() * at::eye(kF, at::kDouble);
  return at::linalg_solve(c, key.to(at::kDouble).unsqueeze(-1)).squeeze(-1);
}

TEST(LeftVector, WithoutSecondMomentIsTheNormalisedPrefixedKeyMean) {
  at::manual_seed(1);
  const at::Tensor k_mean = at::randn({kF}, at::kFloat);
  const at::Tensor u = left_vector(k_mean, nullptr, 0.0);
  const at::Tensor expected = k_mean.to(at::kDouble) / k_mean.to(at::kDouble).norm();
  EXPECT_TRUE(test::all_close_abs(u, expected, 1e-7, "u = k̄ / ‖k̄‖"));
}

TEST(LeftVector, WithSecondMomentIsTheNormalisedSolve) {
  at::manual_seed(2);
  const at::Tensor k_mean = at::randn({kF}, at::kFloat);
  for (double ridge : {0.0, 0.1}) {
    const SecondMoment moment = random_second_moment();
    const at::Tensor direction = direct_solve(moment, k_mean, ridge);
    const at::Tensor u = left_vector(k_mean, &moment, ridge);
    EXPECT_TRUE(test::all_close_abs(u, direction / direction.norm(), 1e-6, "u = C⁻¹k̄ / ‖C⁻¹k̄‖, ridge " + std::to_string(ridge)));
    // Not merely k̄'s direction: C matters.
    EXPECT_GT((u.to(at::kDouble) - k_mean.to(at::kDouble) / k_mean.to(at::kDouble).norm()).abs().max().item<double>(), 1e-3);
  }
  // The ridge changes the solution.
  const SecondMoment moment = random_second_moment();
  EXPECT_GT((left_vector(k_mean, &moment, 0.0) - left_vector(k_mean, &moment, 1.0)).abs().max().item<double>(), 1e-3);
}

// ΔW = (v* − W k − b)(C⁻¹k̄)ᵀ / ((C⁻¹k̄)ᵀ k): the normalisation of u cancels.
at::Tensor explicit_update(const at::Tensor& v_star, const at::Tensor& output, const at::Tensor& c_inv_k_mean,
                           const at::Tensor& key) {
  const at::Tensor numerator = v_star.to(at::kDouble) - output.to(at::kDouble);
  return at::outer(numerator, c_inv_k_mean) / at::dot(c_inv_k_mean, key.to(at::kDouble));
}

TEST(RankOneUpdate, EqualsTheExplicitFormula) {
  at::manual_seed(3);
  const KeySet keys = random_keys();
  const SecondMoment moment = random_second_moment();
  const at::Tensor v_star = at::randn({kD}, at::kFloat);
  const at::Tensor c_inv_k_mean = direct_solve(moment, keys.prefixed_key_mean, 0.0);
  const at::Tensor u = left_vector(keys.prefixed_key_mean, &moment, 0.0);

  const RankOneUpdate crome = rank_one_update(EditMethod::CRome, keys, u, v_star);
  const at::Tensor expected_crome = explicit_update(v_star, keys.prefixed_output_mean, c_inv_k_mean, keys.prefixed_key_mean);
  EXPECT_TRUE(test::all_close_rel(crome.delta_weight(), expected_crome, 1e-5, "C-ROME ΔW"));
  EXPECT_EQ(crome.delta_weight().sizes(), (std::vector<int64_t>{kD, kF}));  // the rewrite weight's [D, F]
  EXPECT_NEAR(crome.update_norm, expected_crome.norm().item<double>(), 1e-5 * expected_crome.norm().item<double>());

  const RankOneUpdate rome = rank_one_update(EditMethod::Rome, keys, u, v_star);
  const at::Tensor expected_rome = explicit_update(v_star, keys.unprefixed_output, c_inv_k_mean, keys.unprefixed_key);
  EXPECT_TRUE(test::all_close_rel(rome.delta_weight(), expected_rome, 1e-5, "ROME ΔW"));

  // After the update, the edited layer maps the key to v*: (W + ΔW) k = W k + (v* − W k).
  EXPECT_TRUE(test::all_close_rel(crome.output + crome.delta_weight().matmul(keys.prefixed_key_mean), v_star, 1e-5,
                                  "(W + ΔW) k̄ = v*"));
}

TEST(RankOneUpdate, RomeDividesByTheUnprefixedKeyCRomeByThePrefixedMean) {
  at::manual_seed(4);
  const KeySet keys = random_keys();
  const at::Tensor u = left_vector(keys.prefixed_key_mean, nullptr, 0.0);
  const at::Tensor v_star = at::randn({kD}, at::kFloat);
  const RankOneUpdate rome = rank_one_update(EditMethod::Rome, keys, u, v_star);
  EXPECT_TRUE(at::equal(rome.key, keys.unprefixed_key));
  EXPECT_TRUE(at::equal(rome.output, keys.unprefixed_output));
  EXPECT_NEAR(rome.denominator, at::dot(keys.unprefixed_key.to(at::kDouble), u.to(at::kDouble)).item<double>(), 1e-6);
  for (EditMethod method : {EditMethod::CRome, EditMethod::CRomePrefix}) {
    const RankOneUpdate crome = rank_one_update(method, keys, u, v_star);
    EXPECT_TRUE(at::equal(crome.key, keys.prefixed_key_mean)) << to_string(method);
    EXPECT_TRUE(at::equal(crome.output, keys.prefixed_output_mean)) << to_string(method);
    // Without C, u = k̄/‖k̄‖, so k̄ · u = ‖k̄‖.
    EXPECT_NEAR(crome.denominator, keys.prefixed_key_mean.to(at::kDouble).norm().item<double>(), 1e-5) << to_string(method);
  }
  EXPECT_GT(std::abs(rome.denominator - keys.prefixed_key_mean.norm().item<double>()), 1e-3);
}

TEST(RankOneUpdate, AKeyOrthogonalToUIsANumericError) {
  KeySet keys = random_keys();
  const at::Tensor u = at::tensor(std::vector<float>{1, 0, 0, 0, 0, 0}, at::kFloat);
  keys.unprefixed_key = at::tensor(std::vector<float>{0, 1, 0, 0, 0, 0}, at::kFloat);  // kᵘ · u = 0
  EXPECT_THROW(rank_one_update(EditMethod::Rome, keys, u, at::ones({kD}, at::kFloat)), NumericError);
}

// log softmax of one row, by hand.
std::vector<double> log_softmax_row(const std::vector<double>& logits) {
  double total = 0;
  for (double x : logits) total += std::exp(x);
  std::vector<double> out;
  for (double x : logits) out.push_back(x - std::log(total));
  return out;
}

at::Tensor float_tensor(const std::vector<std::vector<double>>& rows) {
  std::vector<float> flat;
  for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  return at::tensor(flat, at::kFloat).view({int64_t(rows.size()), int64_t(rows[0].size())});
}

TEST(ValueLossTerms, EqualTheHandComputedNllKlAndWeightDecay) {
  // Two rewriting prompts, a two-token target, vocabulary of 3: four target rows.
  const std::vector<std::vector<double>> target_logits = {{1, 2, 3}, {0, 0, 0}, {2, -1, 0.5}, {-1, 1, 3}};
  const std::vector<int64_t> labels = {2, 0, 2, 0};
  const std::vector<double> kl_now = {0.5, -0.5, 1.0}, kl_init = {0.0, 0.0, 0.0};
  RomeHparams hp;
  hp.kl_factor = 0.25;
  hp.v_weight_decay = 0.5;
  const at::Tensor delta = at::tensor(std::vector<float>{3, 4}, at::kFloat);             // ‖δ‖ = 5
  const at::Tensor target_init_norm = at::scalar_tensor(3.0, at::kFloat);               // ‖h‖ = 3

  double nll = 0;
  for (size_t i = 0; i < labels.size(); ++i) nll -= log_softmax_row(target_logits[i])[labels[i]];
  nll /= double(labels.size());  // the mean over rows of per-row means: every row has |t| = 2 targets
  const std::vector<double> log_now = log_softmax_row(kl_now), log_init = log_softmax_row(kl_init);
  double kl = 0;
  for (size_t v = 0; v < log_now.size(); ++v) kl += std::exp(log_now[v]) * (log_now[v] - log_init[v]);
  kl *= hp.kl_factor;
  const double weight_decay = 0.5 * 5.0 / 9.0;  // v_weight_decay · ‖δ‖ / ‖h‖², the norm not its square

  const at::Tensor init = at::log_softmax(at::tensor(kl_init, at::kDouble), -1).to(at::kFloat);
  const ValueLoss loss = value_loss(float_tensor(target_logits), at::tensor(labels, at::kLong),
                                    at::tensor(kl_now, at::kDouble).to(at::kFloat), init, delta, target_init_norm, hp);
  EXPECT_NEAR(loss.nll.item<double>(), nll, 1e-6);
  EXPECT_NEAR(loss.kl.item<double>(), kl, 1e-7);
  EXPECT_GT(kl, 1e-3);
  EXPECT_NEAR(loss.weight_decay.item<double>(), weight_decay, 1e-7);
  EXPECT_NEAR(loss.total.item<double>(), nll + kl + weight_decay, 1e-6);
  const at::Tensor terms = loss.terms();
  ASSERT_EQ(terms.numel(), 4);
  EXPECT_NEAR(terms[0].item<double>(), nll + kl + weight_decay, 1e-6);
  EXPECT_NEAR(terms[1].item<double>(), nll, 1e-6);
  EXPECT_NEAR(terms[2].item<double>(), kl, 1e-7);
  EXPECT_NEAR(terms[3].item<double>(), weight_decay, 1e-7);
}

TEST(ValueLossTerms, FirstIterationIsItsOwnKlReference) {
  RomeHparams hp;
  const at::Tensor kl_logits = at::tensor(std::vector<float>{0.3f, -2.0f, 1.5f}, at::kFloat);
  const ValueLoss loss = value_loss(float_tensor({{1, 2, 3}}), at::tensor(std::vector<int64_t>{1}, at::kLong), kl_logits,
                                    at::Tensor(), at::zeros({2}, at::kFloat), at::scalar_tensor(1.0, at::kFloat), hp);
  EXPECT_EQ(loss.kl.item<double>(), 0.0);
  EXPECT_EQ(loss.weight_decay.item<double>(), 0.0);  // δ = 0
  EXPECT_TRUE(test::all_close_abs(loss.kl_log_probs, at::log_softmax(kl_logits, -1), 1e-7, "P_init = P_now"));
  EXPECT_NEAR(loss.nll.item<double>(), -log_softmax_row({1, 2, 3})[1], 1e-6);
}

TEST(ValueLossTerms, GradientReachesDeltaThroughTheWeightDecay) {
  RomeHparams hp;
  hp.v_weight_decay = 2.0;
  at::Tensor delta = at::tensor(std::vector<float>{3, 4}, at::kFloat).requires_grad_(true);
  const ValueLoss loss = value_loss(float_tensor({{0, 0}}), at::tensor(std::vector<int64_t>{0}, at::kLong),
                                    at::zeros({2}, at::kFloat), at::Tensor(), delta, at::scalar_tensor(2.0, at::kFloat), hp);
  loss.total.backward();
  // d/dδ [2 · ‖δ‖ / 4] = δ / (2 ‖δ‖) = (0.3, 0.4)
  EXPECT_TRUE(test::all_close_abs(delta.grad(), at::tensor(std::vector<double>{0.3, 0.4}), 1e-7, "∂wd/∂δ"));
}

TEST(ClampDelta, ProjectsIntoTheBallAndLeavesTheInsideAlone) {
  at::Tensor outside = at::tensor(std::vector<float>{6, 8}, at::kFloat);  // ‖·‖ = 10
  clamp_delta(outside, at::scalar_tensor(4.0, at::kFloat));
  EXPECT_TRUE(test::all_close_abs(outside, at::tensor(std::vector<double>{2.4, 3.2}), 1e-6, "clamped to norm 4"));
  at::Tensor inside = at::tensor(std::vector<float>{0.6f, 0.8f}, at::kFloat);
  const at::Tensor before = inside.clone();
  clamp_delta(inside, at::scalar_tensor(4.0, at::kFloat));
  EXPECT_TRUE(at::equal(inside, before));
}

// torch.optim.Adam (PyTorch docs, "Adam" algorithm; defaults β1 = 0.9, β2 = 0.999, eps = 1e-8,
// no weight decay, amsgrad off), one step t on a parameter p with gradient g, written out here:
//   m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²;  p −= lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + eps)
struct ReferenceAdam {
  double lr, m = 0, v = 0;
  int t = 0;
  double step(double p, double g) {
    ++t;
    m = 0.9 * m + 0.1 * g;
    v = 0.999 * v + 0.001 * g * g;
    const double m_hat = m / (1 - std::pow(0.9, t)), v_hat = v / (1 - std::pow(0.999, t));
    return p - lr * m_hat / (std::sqrt(v_hat) + 1e-8);
  }
};

TEST(Adam, ConstantGradientMovesEachParameterByLrTimesItsSign) {
  // With a constant g, m̂ = g and v̂ = g² at every step, so each step is lr · g / (|g| + eps).
  AdamState adam;
  adam.lr = 0.5;
  at::Tensor p = at::tensor(std::vector<double>{1.0, -2.0, 0.25}, at::kDouble);
  const at::Tensor g = at::tensor(std::vector<double>{0.3, -4.0, 1e-3}, at::kDouble);
  at::Tensor expected = p.clone();
  for (int t = 1; t <= 5; ++t) {
    adam.update(p, g);
    expected = expected - adam.lr * g / (g.abs() + 1e-8);
    EXPECT_TRUE(test::all_close_abs(p, expected, 1e-12, "step " + std::to_string(t)));
  }
  EXPECT_EQ(adam.step, 5);
}

TEST(Adam, FollowsTorchOptimAdamOnAQuadratic) {
  // f(p) = ½ Σ a_i p_i², ∇f = a ⊙ p: three steps against the reference rule above.
  const std::vector<double> a = {1.0, 10.0, 0.1}, start = {1.0, -0.5, 3.0};
  AdamState adam;
  adam.lr = 0.1;
  at::Tensor p = at::tensor(start, at::kDouble);
  std::vector<ReferenceAdam> reference(a.size(), ReferenceAdam{0.1});
  std::vector<double> expected = start;
  for (int t = 1; t <= 3; ++t) {
    const at::Tensor grad = at::tensor(a, at::kDouble) * p;
    adam.update(p, grad);
    for (size_t i = 0; i < a.size(); ++i) expected[i] = reference[i].step(expected[i], a[i] * expected[i]);
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_NEAR(p[int64_t(i)].item<double>(), expected[i], 1e-7) << "step " << t << ", parameter " << i;
  }
  // The first step of Adam moves every parameter by lr against its gradient's sign.
  EXPECT_NEAR(ReferenceAdam{0.1}.step(1.0, 5.0), 0.9, 1e-7);
}

TEST(Adam, DeviceStepEqualsHostStep) {
  // The CUDA-graph form (step count and bias corrections as tensors) takes the same steps.
  AdamState host, device;
  host.lr = device.lr = 0.2;
  at::Tensor p_host = at::tensor(std::vector<float>{0.5f, -1.5f, 2.0f}, at::kFloat), p_device = p_host.clone();
  const auto grad_at = [](const at::Tensor& p) { return p * p - 0.5; };
  host.update(p_host, grad_at(p_host));
  device.update(p_device, grad_at(p_device));  // the optimisation's eager warm-up
  device.prepare_on_device(p_device);
  for (int t = 0; t < 3; ++t) {
    host.update(p_host, grad_at(p_host));
    device.update_on_device(p_device, grad_at(p_device));
  }
  EXPECT_TRUE(test::all_close_abs(p_device, p_host, 1e-6, "update_on_device vs update"));
  EXPECT_EQ(device.device_step.item<double>(), 4.0);
}

}  // namespace
}  // namespace rc
