// The forward pass against the paper's code: logits, log-sum-exp, argmax and next-token
// log-probs of golden_reference.json for the three reference architectures, and the
// ME-PPL_50 perplexity; stories260K greedy generation against llama2.c's expected text.
#include <fstream>
#include <sstream>
#include <ATen/core/grad_mode.h>

#include "rome_collapse/eval/perplexity.h"
#include "rome_collapse/io/text_file.h"
#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/text/tokenizer.h"
#include "rome_collapse/util/error.h"
#include "support/golden.h"

namespace rc {
namespace {

class ReferenceForward : public ::testing::TestWithParam<std::string> {};

// The reference checkpoint on test::test_device() (the CPU unless $ROME_TEST_DEVICE says cuda).
std::unique_ptr<CausalLM> load_reference_model(const std::string& arch) {
  LoadOptions options;
  options.device = c10::Device(test::test_device());
  return load_causal_lm(test::reference_model_dir(arch), options);
}

// The golden reference's first prompt for `arch` as a [1, T] batch on the model's device.
at::Tensor first_prompt(const CausalLM& model, const std::string& arch) {
  std::vector<int64_t> ids = test::golden_reference()[arch]["prompts"][0]["ids"];
  return at::tensor(ids, at::kLong).unsqueeze(0).to(model.device());
}

TEST_P(ReferenceForward, LogitsMatchGolden) {
  ROME_REQUIRE_SHARED();
  const std::string arch = GetParam();
  auto model = load_reference_model(arch);
  const auto& golden = test::golden_reference()[arch];
  auto tokenizer = load_tokenizer(test::shared_path("tokenizers/gpt2"));
  for (const auto& prompt : golden["prompts"]) {
    std::vector<int64_t> ids = prompt["ids"].get<std::vector<int64_t>>();
    EXPECT_EQ(tokenizer->encode(prompt["text"].get<std::string>(), false), ids) << prompt["text"];
    at::NoGradGuard no_grad;
    at::Tensor logits = model->forward(at::tensor(ids, at::kLong).unsqueeze(0).to(model->device())).logits[0].cpu();
    const std::string what = arch + " '" + prompt["text"].get<std::string>() + "'";
    EXPECT_TRUE(test::all_close_abs(logits.slice(1, 0, 64), test::json_to_tensor(prompt["logits_first64"]), 1e-4,
                                    what + " logits[:, :64]"));
    EXPECT_TRUE(test::all_close_abs(at::logsumexp(logits, -1), test::json_to_tensor(prompt["logsumexp"]), 1e-4,
                                    what + " logsumexp"));
    at::Tensor argmax = logits.argmax(-1);
    EXPECT_EQ(std::vector<int64_t>(argmax.data_ptr<int64_t>(), argmax.data_ptr<int64_t>() + argmax.numel()),
              prompt["argmax"].get<std::vector<int64_t>>())
        << what;
    at::Tensor log_probs = at::log_softmax(logits, -1);
    std::vector<double> next_token;
    for (size_t t = 0; t + 1 < ids.size(); ++t) next_token.push_back(log_probs[t][ids[t + 1]].item<double>());
    EXPECT_TRUE(test::all_close_abs(at::tensor(next_token, at::kDouble),
                                    test::json_to_tensor(prompt["next_token_logprob"]), 1e-4,
                                    what + " next-token log-probs"));
  }
}

TEST_P(ReferenceForward, PaddedBatchEqualsSingleRows) {
  ROME_REQUIRE_SHARED();
  const std::string arch = GetParam();
  auto model = load_reference_model(arch);
  at::NoGradGuard no_grad;
  std::vector<std::vector<int64_t>> rows;
  for (const auto& prompt : test::golden_reference()[arch]["prompts"]) rows.push_back(prompt["ids"]);
  at::Tensor batch_logits = model->forward(pad_batch(rows, 50256, model->device())).logits;  // [B, T, V]
  for (size_t r = 0; r < rows.size(); ++r) {
    at::Tensor single = model->forward(at::tensor(rows[r], at::kLong).unsqueeze(0).to(model->device())).logits[0];
    EXPECT_TRUE(test::all_close_abs(batch_logits[r].slice(0, 0, rows[r].size()), single, 1e-5,
                                    arch + " padded row " + std::to_string(r)));
  }
}

TEST_P(ReferenceForward, PerplexityMatchesGolden) {
  ROME_REQUIRE_SHARED();
  const std::string arch = GetParam();
  auto model = load_reference_model(arch);
  auto tokenizer = load_tokenizer(test::shared_path("tokenizers/gpt2"));
  auto texts = read_texts(test::shared_path("data/me-ppl/ME-PPL_50.json"));
  PerplexitySummary summary =
      perplexity(*model, perplexity_token_ids(*tokenizer, texts, model->config().max_positions), 10);
  const auto& golden = test::golden_reference()[arch];
  EXPECT_TRUE(test::scalar_close_rel(summary.mean, golden["ppl_before"].get<double>(), 1e-3, arch + " ppl_before"));
  EXPECT_TRUE(test::all_close_rel(at::tensor(summary.per_text, at::kDouble), test::json_to_tensor(golden["ppl_each_before"]),
                                  1e-3, arch + " per-text perplexity"));
}

INSTANTIATE_TEST_SUITE_P(Architectures, ReferenceForward, ::testing::Values("gpt2", "llama", "gptj"));

TEST(InterventionTest, CaptureAndDeltaAtPositions) {
  ROME_REQUIRE_SHARED();
  auto model = load_reference_model("gpt2");
  at::Tensor batch = first_prompt(*model, "gpt2");
  const int64_t d_model = model->config().d_model;

  // Captured key at position 3 reproduces the captured output through W k + b.
  ForwardOptions capture;
  capture.intervention.layer = 1;
  capture.intervention.capture_at = {{0, 3}, {0, 5}};
  ForwardOutput captured = model->forward(batch, capture);
  ASSERT_EQ(captured.captured_keys.sizes(), (std::vector<int64_t>{2, model->config().d_ff}));
  at::Tensor recomputed = at::linear(captured.captured_keys, model->rewrite_weight(1), model->rewrite_bias(1));
  EXPECT_TRUE(test::all_close_abs(recomputed, captured.captured_outputs, 1e-5, "W k + b"));

  // A zero delta changes nothing; a non-zero one changes only positions >= 3; gradients reach delta.
  ForwardOptions with_delta;
  with_delta.intervention.layer = 1;
  with_delta.intervention.delta =
      at::zeros({d_model}, at::TensorOptions().dtype(at::kFloat).device(model->device())).requires_grad_(true);
  with_delta.intervention.delta_at = {{0, 3}};
  at::Tensor base_logits = model->forward(batch).logits.detach();
  ForwardOutput zero = model->forward(batch, with_delta);
  EXPECT_TRUE(test::all_close_abs(zero.logits.detach(), base_logits, 1e-6, "zero delta"));
  zero.logits[0][6][42].backward();
  ASSERT_TRUE(with_delta.intervention.delta.grad().defined());
  EXPECT_GT(with_delta.intervention.delta.grad().abs().sum().item<double>(), 0.0);

  // Not a constant vector: LayerNorm would remove a uniform shift.
  with_delta.intervention.delta = at::linspace(-3.0, 3.0, d_model, at::kFloat).to(model->device());
  at::NoGradGuard no_grad;
  at::Tensor shifted = model->forward(batch, with_delta).logits;
  EXPECT_TRUE(test::all_close_abs(shifted[0].slice(0, 0, 3), base_logits[0].slice(0, 0, 3), 1e-6, "before delta"));
  EXPECT_GT((shifted[0].slice(0, 3) - base_logits[0].slice(0, 3)).abs().max().item<double>(), 1e-3);
}

TEST(InterventionTest, StartLayerFromCachedHiddenEqualsFullForward) {
  ROME_REQUIRE_SHARED();
  for (const std::string arch : {"gpt2", "llama", "gptj"}) {
    auto model = load_reference_model(arch);
    at::Tensor batch = first_prompt(*model, arch);
    at::NoGradGuard no_grad;
    ForwardOptions keep;
    keep.keep_hidden_entering = 2;
    ForwardOutput full = model->forward(batch, keep);
    ForwardOptions resume;
    resume.start_layer = 2;
    resume.initial_hidden = full.hidden_entering;
    resume.logits_at = {{0, 4}, {0, 7}};
    at::Tensor partial = model->forward(batch, resume).logits;  // [2, V]
    EXPECT_TRUE(test::all_close_abs(partial[0], full.logits[0][4], 1e-5, arch + " resumed logits pos 4"));
    EXPECT_TRUE(test::all_close_abs(partial[1], full.logits[0][7], 1e-5, arch + " resumed logits pos 7"));
  }
}

TEST(KVCacheTest, CachedPrefixGivesTheSameLogitsAndKeys) {
  ROME_REQUIRE_SHARED();
  for (const std::string arch : {"gpt2", "llama", "gptj"}) {
    auto model = load_reference_model(arch);
    at::Tensor batch = first_prompt(*model, arch);
    at::NoGradGuard no_grad;
    ForwardOptions full_options;
    full_options.intervention.layer = 2;
    full_options.intervention.capture_at = {{0, 6}};
    ForwardOutput full = model->forward(batch, full_options);
    // The first 4 tokens into the cache, the rest against it.
    KVCache cache;
    ForwardOptions prefix;
    prefix.record = &cache;
    model->forward(batch.slice(1, 0, 4), prefix);
    ForwardOptions rest;
    rest.past = &cache;
    rest.intervention.layer = 2;
    rest.intervention.capture_at = {{0, 2}};
    ForwardOutput continued = model->forward(batch.slice(1, 4), rest);
    EXPECT_TRUE(test::all_close_abs(continued.logits[0], full.logits[0].slice(0, 4), 1e-5, arch + " cached logits"));
    EXPECT_TRUE(test::all_close_abs(continued.captured_keys, full.captured_keys, 1e-5, arch + " cached key"));
    EXPECT_EQ(cache.length(0), 4);
  }
}

// ROME's optimisation recomputes each row from its own start (ragged windows, left-aligned, with
// per-row positions and each row's cache masked from that start on): the same logits as one
// full forward pass, for learned (GPT-2) and rotary (Llama, GPT-J) positions.
TEST(KVCacheTest, RaggedRowsEqualTheFullForwardPass) {
  ROME_REQUIRE_SHARED();
  for (const std::string arch : {"gpt2", "llama", "gptj"}) {
    auto model = load_reference_model(arch);
    const auto& prompts = test::golden_reference()[arch]["prompts"];
    std::vector<std::vector<int64_t>> rows = {prompts[0]["ids"], prompts[1]["ids"]};
    const std::vector<int64_t> starts = {1, 4};  // row r recomputes positions [starts[r], its end)
    test::expect_ragged_rows_match_full_pass(*model, rows, starts, 2, 4, arch);
  }
}

TEST(InterventionTest, PromptLongerThanContextIsRefused) {
  ROME_REQUIRE_SHARED();
  auto model = load_reference_model("gpt2");
  at::Tensor too_long = at::zeros({1, model->config().max_positions + 1}, at::kLong).to(model->device());
  at::NoGradGuard no_grad;
  EXPECT_THROW(model->forward(too_long), InputError);
}

}  // namespace
}  // namespace rc
