// The edit against the paper's code: all 24 cases of golden_reference.json (3 architectures x
// 4 requests x rome/c-rome) — keys, left vector, denominator, right vector, v*, norms and
// perplexity after the edit — and the collapse mechanism on the subject-first GPT-2 case.
#include <cstdio>
#include <cstdlib>

#include "rome_collapse/experiment/edit_config.h"
#include "rome_collapse/model/cuda_graph_step.h"
#include "rome_collapse/rome/edit.h"
#include "support/golden.h"

namespace rc {
namespace {

EditConfig golden_config(const std::string& arch) {
  const auto& golden = test::golden_reference()[arch];
  nlohmann::json json = {
      {"model", test::reference_model_dir(arch)},
      {"tokenizer", test::shared_path("tokenizers/gpt2").string()},
      {"add_bos", false},
      {"request", golden["cases"][0]["request"]},
      {"hparams",
       {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 20}, {"v_lr", 0.5}, {"v_weight_decay", 0.5},
        {"clamp_norm_factor", 4}, {"kl_factor", 0.0625}, {"mom2_adjustment", false}}},
      {"context_templates", golden["context_templates"]},
      {"perplexity", {{"texts", test::shared_path("data/me-ppl/ME-PPL_50.json").string()}, {"batch_size", 10}}},
      {"dump_vectors", true}};
  return parse_edit_config(json, "golden-" + arch, ".");
}

struct ArchFixture {
  LoadedModel loaded;
  EditConfig config;
  EditContext context;
};

ArchFixture& fixture(const std::string& arch) {
  static std::map<std::string, std::unique_ptr<ArchFixture>> cache;
  auto& slot = cache[arch];
  if (!slot) {  // filled only once complete: a load that throws fails every test, none crashes
    auto built = std::make_unique<ArchFixture>();
    built->config = golden_config(arch);
    built->loaded = load_model(built->config.model, built->config.tokenizer, built->config.add_bos,
                               test::test_device(), "float32");
    built->context = prepare_edit_context(built->loaded, built->config);
    slot = std::move(built);
  }
  return *slot;
}

at::Tensor vec(const nlohmann::json& result, const char* name) {
  return test::json_to_tensor(result["vectors"][name]);
}

class GoldenEdit : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(GoldenEdit, ReproducesThePapersCode) {
  ROME_REQUIRE_SHARED();
  const auto [arch, case_index] = GetParam();
  ArchFixture& f = fixture(arch);
  const auto& golden_case = test::golden_reference()[arch]["cases"][case_index];
  const EditRequest request = parse_request(golden_case["request"], "golden request");
  const EditMethod method = parse_method(golden_case["mode"], "golden mode");
  const std::string what = arch + " case " + std::to_string(case_index) + " (" + golden_case["mode"].get<std::string>() +
                           ", " + request.subject + ")";

  at::Tensor weight_before = f.loaded.model->rewrite_weight(1).clone();
  EditOutcome outcome = run_edit(f.loaded, f.config, request, method, f.context);
  const nlohmann::json& r = outcome.result;
  EXPECT_TRUE(at::equal(f.loaded.model->rewrite_weight(1), weight_before)) << what << ": W not restored exactly";

  // Keys, u and the denominator: 1e-4 relative.
  EXPECT_TRUE(test::all_close_rel(vec(r, "prefixed_key_mean"), test::json_to_tensor(golden_case["k_prefixed_mean"]), 1e-4,
                                  what + " k̄"));
  EXPECT_TRUE(test::all_close_rel(vec(r, "unprefixed_key"), test::json_to_tensor(golden_case["k_unprefixed"]), 1e-4,
                                  what + " kᵘ"));
  EXPECT_TRUE(test::all_close_rel(vec(r, "unprefixed_output"), test::json_to_tensor(golden_case["out_unprefixed"]), 1e-4,
                                  what + " W kᵘ + b"));
  EXPECT_TRUE(test::all_close_rel(vec(r, "prefixed_output_mean"), test::json_to_tensor(golden_case["out_prefixed_mean"]),
                                  1e-4, what + " mean output"));
  EXPECT_TRUE(test::all_close_rel(vec(r, "left_vector"), test::json_to_tensor(golden_case["u"]), 1e-4, what + " u"));
  EXPECT_TRUE(test::scalar_close_rel(r["denominator"], golden_case["denominator"], 1e-4, what + " denominator"));
  // After the 20-step optimisation: 1e-3 relative — except where float32 rounding alone moves v*
  // further. The tiny Llama's ||target_init|| is 0.035, so the weight-decay gradient is ~1700x
  // the NLL gradient and 2-ulp gradient noise moves v* of the "Danielle Darrieux" and "Windows
  // Phone" requests by up to 3.9e-3 (max-rel; 24 seeds), and an exact float64 run of the same
  // algorithm is itself 2.4e-3 from the golden value (README: "Reproducing the golden values").
  const bool rounding_limited = arch == "llama" && case_index >= 2 && case_index <= 5;
  const double optimised_vector_rtol = rounding_limited ? 5e-3 : 1e-3;
  EXPECT_TRUE(test::all_close_rel(vec(r, "v_star"), test::json_to_tensor(golden_case["v_star"]), optimised_vector_rtol,
                                  what + " v*"));
  EXPECT_TRUE(test::all_close_rel(vec(r, "right_vector"), test::json_to_tensor(golden_case["right"]),
                                  optimised_vector_rtol, what + " right vector"));
  EXPECT_TRUE(test::scalar_close_rel(r["update_norm"], golden_case["update_norm"], 1e-3, what + " update norm"));
  EXPECT_TRUE(test::scalar_close_rel(r["numerator_norm"], golden_case["numerator_norm"], 1e-3, what + " numerator norm"));
  EXPECT_TRUE(test::scalar_close_rel(r["right_vector_norm"], golden_case["right_norm"], 1e-3, what + " right norm"));
  EXPECT_TRUE(test::scalar_close_rel(r["cos_unprefixed_prefixed"], golden_case["cos_ku_kbar"], 1e-4, what + " cos"));
  EXPECT_TRUE(test::scalar_close_rel(r["perplexity_after"]["mean"], golden_case["ppl_after"], 1e-3, what + " ppl_after"));
  EXPECT_EQ(r["subject_first"].get<bool>(), golden_case["subject_first"].get<bool>()) << what;
  const auto& logprobs = golden_case["logprob_new_true_after"];
  EXPECT_NEAR(r["logprob_target_new_after"].get<double>(), logprobs[0].get<double>(), 1e-3) << what;
  EXPECT_NEAR(r["logprob_target_true_after"].get<double>(), logprobs[1].get<double>(), 1e-3) << what;
}

INSTANTIATE_TEST_SUITE_P(AllCases, GoldenEdit,
                         ::testing::Combine(::testing::Values("gpt2", "llama", "gptj"), ::testing::Range(0, 8)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_case" + std::to_string(std::get<1>(info.param));
                         });

// The paper's mechanism in a random GPT-2: subject at the first token -> ROME's denominator
// nearly vanishes, C-ROME's does not.
TEST(CollapseMechanism, SubjectFirstDenominator) {
  ROME_REQUIRE_SHARED();
  ArchFixture& f = fixture("gpt2");
  const auto& golden_case = test::golden_reference()["gpt2"]["cases"][0];
  ASSERT_TRUE(golden_case["subject_first"].get<bool>());
  const EditRequest request = parse_request(golden_case["request"], "golden request");
  EditOptions no_eval;
  no_eval.evaluate = false;
  auto rome = run_edit(f.loaded, f.config, request, EditMethod::Rome, f.context, no_eval);
  auto c_rome = run_edit(f.loaded, f.config, request, EditMethod::CRome, f.context, no_eval);
  EXPECT_TRUE(rome.subject_first);
  EXPECT_LT(std::abs(rome.update.denominator), 0.1);
  EXPECT_GT(std::abs(c_rome.update.denominator), 1.0);
  EXPECT_GT(rome.update.update_norm, 5 * c_rome.update.update_norm);
}

// The optimised path (lower layers cached, ragged windows from each row's subject token, logits
// only where the loss reads them) against the reference-equivalent one (the paper's: every layer,
// the whole padded batch, full logits), with the loss at the last layer and at an inner one.
TEST(ForwardPaths, OptimisedPathEqualsTheReferenceEquivalentPath) {
  ROME_REQUIRE_SHARED();
  for (const std::string arch : {"gpt2", "llama", "gptj"}) {
    ArchFixture& f = fixture(arch);
    const auto& golden_case = test::golden_reference()[arch]["cases"][1];
    const EditRequest request = parse_request(golden_case["request"], "golden request");
    for (int64_t loss_layer : {3, 2}) {
      EditConfig config = f.config;
      config.hparams.v_num_grad_steps = 6;
      config.hparams.v_loss_layer = loss_layer;
      EditOptions reference, optimised;
      reference.path = ForwardPath::Reference;
      reference.evaluate = optimised.evaluate = false;
      auto expected = run_edit(f.loaded, config, request, EditMethod::CRome, f.context, reference);
      auto actual = run_edit(f.loaded, config, request, EditMethod::CRome, f.context, optimised);
      const std::string what = arch + " v_loss_layer " + std::to_string(loss_layer);
      ASSERT_EQ(actual.value.loss.size(), expected.value.loss.size()) << what;
      for (size_t i = 0; i < actual.value.loss.size(); ++i)
        EXPECT_NEAR(actual.value.loss[i], expected.value.loss[i], 1e-5 * std::abs(expected.value.loss[i])) << what;
      EXPECT_TRUE(test::all_close_rel(actual.value.v_star, expected.value.v_star, 1e-4, what + " v*"));
    }
  }
}

// On a GPU (ROME_TEST_DEVICE=cuda, PyTorch's libtorch) the optimised path replays a CUDA graph
// step from the third iteration on; it must give what the same path gives eagerly. On the CPU
// both runs are eager and the test checks that the switch changes nothing there.
TEST(ForwardPaths, CudaGraphStepEqualsEagerSteps) {
  ROME_REQUIRE_SHARED();
  ArchFixture& f = fixture("gptj");  // not one of the tiny Llama's noise-amplifying requests
  const auto& golden_case = test::golden_reference()["gptj"]["cases"][7];
  const EditRequest request = parse_request(golden_case["request"], "golden request");
  EditOptions no_eval;
  no_eval.evaluate = false;
  ::setenv("ROME_CUDA_GRAPHS", "0", 1);
  auto eager = run_edit(f.loaded, f.config, request, EditMethod::CRome, f.context, no_eval);
  ::unsetenv("ROME_CUDA_GRAPHS");
  auto graph = run_edit(f.loaded, f.config, request, EditMethod::CRome, f.context, no_eval);
  ASSERT_EQ(graph.value.loss.size(), eager.value.loss.size());
  EXPECT_EQ(graph.value.adam_steps, eager.value.adam_steps);
  for (size_t i = 0; i < eager.value.loss.size(); ++i)
    EXPECT_NEAR(graph.value.loss[i], eager.value.loss[i], 1e-5 * std::abs(eager.value.loss[i])) << "iteration " << i;
  EXPECT_TRUE(test::all_close_rel(graph.value.v_star, eager.value.v_star, 1e-4, "v* CUDA graph vs eager"));
  std::printf("CUDA graphs compiled: %s, device: %s\n", cuda_graphs_compiled() ? "yes" : "no", test::test_device().c_str());
}

}  // namespace
}  // namespace rc
