// Several requests' v* optimised in one pass (rewrite_layer_inputs + optimize_values) against each
// request optimised alone (rewrite_layer_input + optimize_value), on the three tiny reference
// models: keys and outputs, v*, δ, iterations, Adam steps and the loss trajectory; early stop per
// request, an inner v_loss_layer, a group of one (bit for bit), an empty group, and NaNs naming
// their request. Beyond a group of one, "equal" is bounded by the single path's own float32 noise
// (rounding_floor below): the batch's shape alone moves v* that much.
#include <algorithm>
#include <cstdio>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "rome_collapse/io/request.h"
#include "rome_collapse/model/loaded_model.h"
#include "rome_collapse/rome/value.h"
#include "rome_collapse/rome/value_group.h"
#include "rome_collapse/util/error.h"
#include "support/golden.h"

namespace rc {
namespace {

struct TinyModel {
  LoadedModel loaded;
  std::vector<std::string> templates;
  RomeHparams hparams;  // the golden tests' settings
};

TinyModel& setup(const std::string& arch) {
  static std::map<std::string, std::unique_ptr<TinyModel>> cache;
  auto& slot = cache[arch];
  if (!slot) {
    auto built = std::make_unique<TinyModel>();
    built->loaded = load_model(test::reference_model_dir(arch), test::shared_path("tokenizers/gpt2").string(), false,
                               test::test_device(), "float32");
    built->templates = test::golden_reference()[arch]["context_templates"].get<std::vector<std::string>>();
    built->hparams.layer = 1;
    built->hparams.v_loss_layer = 3;
    slot = std::move(built);
  }
  return *slot;
}

// The golden requests (two with the subject first), the last with a target of several tokens.
std::vector<EditRequest> group_requests(const std::string& arch) {
  std::vector<EditRequest> requests;
  for (int golden_case : {0, 2, 4, 6})
    requests.push_back(parse_request(test::golden_reference()[arch]["cases"][golden_case]["request"], "golden"));
  requests.back().target_new = "Old Church Slavonic";
  return requests;
}

std::vector<ValueBatch> batches_of(const TinyModel& s, const std::vector<EditRequest>& requests) {
  std::vector<ValueBatch> batches;
  for (const auto& request : requests)
    batches.push_back(build_value_batch(*s.loaded.tokenizer, s.loaded.add_bos, request, s.templates,
                                        s.hparams.kl_prompt, s.loaded.pad_id(), s.loaded.model->device()));
  return batches;
}

ValueOptimization optimize_alone(const TinyModel& s, const ValueBatch& batch, const RomeHparams& hparams) {
  const RewriteLayerInput input = rewrite_layer_input(*s.loaded.model, batch, hparams.layer, /*record_cache=*/true);
  return optimize_value(*s.loaded.model, batch, input, hparams);
}

double relative(const at::Tensor& actual, const at::Tensor& expected) {
  return (actual - expected).abs().max().item<double>() / std::max(expected.abs().max().item<double>(), 1e-12);
}

// How far two optimisations of one request are apart: δ and v* (max-relative), and the loss
// trajectory (each iteration's loss, NLL and weight decay relative to itself, KL relative to the loss).
struct Deviation {
  double vectors = 0, trajectory = 0;
};
Deviation deviation(const ValueOptimization& actual, const ValueOptimization& expected) {
  Deviation d;
  d.vectors = std::max(relative(actual.delta, expected.delta), relative(actual.v_star, expected.v_star));
  const size_t n = std::min(actual.loss.size(), expected.loss.size());
  for (size_t i = 0; i < n; ++i) {
    const double scale = std::max(std::abs(expected.loss[i]), 1e-12);
    d.trajectory = std::max({d.trajectory, std::abs(actual.loss[i] - expected.loss[i]) / scale,
                             std::abs(actual.nll[i] - expected.nll[i]) / std::max(std::abs(expected.nll[i]), 1e-12),
                             std::abs(actual.weight_decay[i] - expected.weight_decay[i]) /
                                 std::max(std::abs(expected.weight_decay[i]), 1e-12),
                             std::abs(actual.kl[i] - expected.kl[i]) / scale});
  }
  return d;
}

// The single path's own float32 noise on a request: optimize_value on the same rows right-padded by
// 6 more columns, which changes nothing but the shapes the BLAS kernels see. A group changes those
// shapes too, and Adam (dividing by √v) grows the ~1e-7 rounding differences of one forward pass into
// 4e-5 .. 9e-4 in δ after 20 iterations on these models (README: "v* of several requests at once").
Deviation rounding_floor(const TinyModel& s, const ValueBatch& batch, const ValueOptimization& alone,
                         const RomeHparams& hparams) {
  ValueBatch padded = batch;
  padded.ids = at::constant_pad_nd(batch.ids, {0, 6}, s.loaded.pad_id());
  return deviation(optimize_alone(s, padded, hparams), alone);
}

// Every request of the group against its own optimisation: keys and outputs within 1e-6, the same
// iterations and Adam steps, the first iteration's loss (no δ yet) within 1e-6, and δ, v* and the
// trajectory within 1e-5 or 3x the single path's rounding floor (the largest of the group's), whichever
// is larger. A group of one is bit for bit the single path. Returns the group's results.
std::vector<ValueOptimization> expect_group_equals_singles(const TinyModel& s, const std::vector<ValueBatch>& batches,
                                                           const RomeHparams& hparams, const std::string& what) {
  const GroupedLayerInput input = rewrite_layer_inputs(*s.loaded.model, batches, hparams.layer);
  EXPECT_EQ(input.requests.size(), batches.size()) << what;
  const std::vector<ValueOptimization> group = optimize_values(*s.loaded.model, batches, input, hparams);
  EXPECT_EQ(group.size(), batches.size()) << what;
  if (group.size() != batches.size()) return group;
  std::vector<ValueOptimization> alone;
  Deviation floor;
  for (size_t g = 0; g < batches.size(); ++g) {
    const std::string request = what + " request " + std::to_string(g);
    const RewriteLayerInput alone_input = rewrite_layer_input(*s.loaded.model, batches[g], hparams.layer);
    EXPECT_TRUE(test::all_close_rel(input.requests[g].keys, alone_input.keys, 1e-6, request + " keys"));
    EXPECT_TRUE(test::all_close_rel(input.requests[g].outputs, alone_input.outputs, 1e-6, request + " outputs"));
    alone.push_back(optimize_alone(s, batches[g], hparams));
    if (batches.size() == 1) break;
    const Deviation own = rounding_floor(s, batches[g], alone.back(), hparams);
    floor.vectors = std::max(floor.vectors, own.vectors);
    floor.trajectory = std::max(floor.trajectory, own.trajectory);
  }
  for (size_t g = 0; g < batches.size(); ++g) {
    const std::string request = what + " request " + std::to_string(g);
    EXPECT_EQ(group[g].iterations, alone[g].iterations) << request;
    EXPECT_EQ(group[g].adam_steps, alone[g].adam_steps) << request;
    EXPECT_TRUE(test::all_close_rel(group[g].target_init, alone[g].target_init, 1e-6, request + " target_init"));
    if (group[g].loss.empty() || alone[g].loss.empty()) {
      ADD_FAILURE() << request << ": no iterations";
      continue;
    }
    EXPECT_NEAR(group[g].loss[0], alone[g].loss[0], 1e-6 * std::abs(alone[g].loss[0])) << request << " first loss";
    if (batches.size() == 1) {
      EXPECT_TRUE(at::equal(group[g].v_star, alone[g].v_star)) << request << ": v* not bit for bit";
      EXPECT_TRUE(at::equal(group[g].delta, alone[g].delta)) << request << ": δ not bit for bit";
      EXPECT_EQ(group[g].loss, alone[g].loss) << request;
      continue;
    }
    const Deviation d = deviation(group[g], alone[g]);
    std::printf("%s: δ, v* %.2g (rounding floor %.2g), loss trajectory %.2g (floor %.2g)\n", request.c_str(),
                d.vectors, floor.vectors, d.trajectory, floor.trajectory);
    EXPECT_LE(d.vectors, std::max(1e-5, 3 * floor.vectors)) << request << " δ, v* (rounding floor " << floor.vectors << ")";
    EXPECT_LE(d.trajectory, std::max(1e-5, 3 * floor.trajectory))
        << request << " loss trajectory (rounding floor " << floor.trajectory << ")";
  }
  return group;
}

class ValueGroup : public ::testing::TestWithParam<std::string> {};

TEST_P(ValueGroup, EqualsEachRequestOptimisedAlone) {
  ROME_REQUIRE_SHARED();
  const TinyModel& s = setup(GetParam());
  const std::vector<ValueBatch> batches = batches_of(s, group_requests(GetParam()));
  ASSERT_GT(batches.back().target_ids.size(), batches.front().target_ids.size()) << "targets of different lengths";
  expect_group_equals_singles(s, batches, s.hparams, GetParam());
}

TEST_P(ValueGroup, InnerLossLayerEqualsEachRequestAlone) {
  ROME_REQUIRE_SHARED();
  const TinyModel& s = setup(GetParam());
  RomeHparams hparams = s.hparams;
  hparams.v_loss_layer = 2;
  hparams.v_num_grad_steps = 8;
  expect_group_equals_singles(s, batches_of(s, group_requests(GetParam())), hparams, GetParam() + " v_loss_layer 2");
}

// A loss that falls (v_lr 0.2, no weight decay: with the golden settings these random models' loss
// rises from the first step on) and early_stop_loss halfway between the fastest request's losses at
// iterations 1 and 2: that request stops at iteration 2, after two Adam steps (its δ and moments
// leave the group's), the others run to the last iteration; each as it does alone.
TEST_P(ValueGroup, EarlyStopIsPerRequest) {
  ROME_REQUIRE_SHARED();
  const TinyModel& s = setup(GetParam());
  const std::vector<ValueBatch> batches = batches_of(s, group_requests(GetParam()));
  RomeHparams hparams = s.hparams;
  hparams.v_lr = 0.2;
  hparams.v_weight_decay = 0.0;
  hparams.v_num_grad_steps = 8;
  hparams.early_stop_loss = 0.0;  // never
  std::vector<ValueOptimization> alone;
  for (const auto& batch : batches) alone.push_back(optimize_alone(s, batch, hparams));
  size_t fastest = 0;
  for (size_t g = 1; g < alone.size(); ++g)
    if (alone[g].loss.back() < alone[fastest].loss.back()) fastest = g;
  const double threshold = (alone[fastest].loss[1] + alone[fastest].loss[2]) / 2;
  ASSERT_LT(alone[fastest].loss[2], alone[fastest].loss[1]) << "the fastest request's loss falls";
  for (size_t g = 0; g < alone.size(); ++g)
    if (g != fastest) ASSERT_GT(*std::min_element(alone[g].loss.begin(), alone[g].loss.end()), threshold) << g;
  hparams.early_stop_loss = threshold;
  const auto group = expect_group_equals_singles(s, batches, hparams, GetParam() + " early stop");
  ASSERT_EQ(group.size(), batches.size());
  for (size_t g = 0; g < group.size(); ++g) {
    EXPECT_EQ(group[g].iterations, g == fastest ? 3 : hparams.v_num_grad_steps) << "request " << g;
    EXPECT_EQ(group[g].adam_steps, g == fastest ? 2 : hparams.v_num_grad_steps - 1) << "request " << g;
  }
}

TEST_P(ValueGroup, GroupOfOneEqualsTheSinglePath) {
  ROME_REQUIRE_SHARED();
  const TinyModel& s = setup(GetParam());
  expect_group_equals_singles(s, batches_of(s, {group_requests(GetParam())[1]}), s.hparams, GetParam() + " alone");
}

INSTANTIATE_TEST_SUITE_P(TinyReferenceModels, ValueGroup, ::testing::Values("gpt2", "llama", "gptj"));

TEST(ValueGroupEdges, EmptyGroupIsEmpty) {
  ROME_REQUIRE_SHARED();
  const TinyModel& s = setup("gpt2");
  const GroupedLayerInput input = rewrite_layer_inputs(*s.loaded.model, {}, s.hparams.layer);
  EXPECT_TRUE(input.requests.empty());
  EXPECT_TRUE(optimize_values(*s.loaded.model, {}, input, s.hparams).empty());
}

void expect_numeric_error_naming(const std::function<void()>& run, const std::string& request) {
  try {
    run();
    ADD_FAILURE() << "no NumericError";
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find(request + " of the group: v* optimisation: the loss became"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("nan"), std::string::npos) << e.what();
  }
}

TEST(ValueGroupEdges, NanInOneRequestNamesThatRequest) {
  ROME_REQUIRE_SHARED();
  const TinyModel& s = setup("gpt2");
  const std::vector<ValueBatch> batches = batches_of(s, group_requests("gpt2"));
  GroupedLayerInput input = rewrite_layer_inputs(*s.loaded.model, batches, s.hparams.layer);
  // Request 2's target_init (its bare prompt's output at L) NaN: its weight decay is NaN.
  input.requests[2].outputs = at::full_like(input.requests[2].outputs, std::numeric_limits<float>::quiet_NaN());
  expect_numeric_error_naming([&] { optimize_values(*s.loaded.model, batches, input, s.hparams); }, "request 2");
}

TEST(ValueGroupEdges, NanWeightAboveTheEditedLayerNamesTheFirstRequest) {
  ROME_REQUIRE_SHARED();
  TinyModel& s = setup("gptj");
  CausalLM& model = *s.loaded.model;
  const std::vector<ValueBatch> batches = batches_of(s, group_requests("gptj"));
  const GroupedLayerInput input = rewrite_layer_inputs(model, batches, s.hparams.layer);
  const int64_t above = s.hparams.layer + 1;
  const at::Tensor weight = model.rewrite_weight(above).clone();
  model.set_rewrite_weight(above, at::full_like(weight, std::numeric_limits<float>::quiet_NaN()));
  expect_numeric_error_naming([&] { optimize_values(model, batches, input, s.hparams); }, "request 0");
  model.set_rewrite_weight(above, weight);
}

}  // namespace
}  // namespace rc
