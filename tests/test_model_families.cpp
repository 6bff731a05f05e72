// The newer decoder families (gpt_neox, opt, qwen2, mistral, llama with llama3 rope scaling)
// against ../shared/reference/<family>/golden.json, which comes from independent re-implementations
// of Hugging Face's modeling code (reference/FAMILIES.md): logits (first 64, log-sum-exp, argmax
// where the top-two gap allows), the layer-1 MLP down-projection input (key) and output, the
// right-padded batch; then every pass that must agree with the plain forward pass (KV cache,
// token-by-token generation, ragged rows, perplexity) — for Mistral over texts longer than its window.
#include <cmath>
#include <numeric>

#include <ATen/core/grad_mode.h>

#include "rome_collapse/eval/perplexity.h"
#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/model/generation.h"
#include "rome_collapse/text/tokenizer.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "support/golden.h"

namespace rc {
namespace {

// One row of golden values at the real positions of one prompt, from either golden format.
struct GoldenRow {
  std::string name;
  std::vector<int64_t> ids;
  nlohmann::json logits_first64, logsumexp, argmax, next_token_logprobs;
  nlohmann::json top2_gap;  // null where the file does not record it
  nlohmann::json key_first32, key_norm, out_first32, out_norm;
};

struct FamilyGolden {
  std::vector<GoldenRow> prompts;
  std::vector<std::vector<int64_t>> batch_ids;  // right-padded
  std::vector<GoldenRow> batch_rows;            // real positions only
};

const nlohmann::json& golden_file(const std::string& family) {
  static std::map<std::string, nlohmann::json> cache;
  auto found = cache.find(family);
  if (found == cache.end()) {
    nlohmann::json json = nlohmann::json::parse(read_file(test::shared_path("reference/" + family + "/golden.json")));
    found = cache.emplace(family, std::move(json)).first;
  }
  return found->second;
}

// gpt_neox / opt: "hf-decoder-oracle-golden/1" (prompts[], batch.rows[]).
GoldenRow row_from_decoder_oracle(const nlohmann::json& row, std::vector<int64_t> ids) {
  return {row.value("name", row.value("prompt_name", "")), std::move(ids), row["logits_first64"], row["logsumexp"],
          row["argmax"], row["next_token_logprobs"], nullptr, row["down_proj_in_first32"],
          row["down_proj_in_l2norm"], row["down_proj_out_first32"], row["down_proj_out_l2norm"]};
}

// qwen2 / mistral / llama3: "llamafam-golden-v1" (cases[] with rows[]).
GoldenRow row_from_llamafam(const std::string& name, const nlohmann::json& row, std::vector<int64_t> ids) {
  const auto& in = row["mlp_down_proj_input_layer1"];
  const auto& out = row["mlp_down_proj_output_layer1"];
  return {name, std::move(ids), row["logits_first64"], row["logsumexp"], row["argmax"], row["next_token_logprobs"],
          row["argmax_top2_gap"], in["first32"], in["l2norm"], out["first32"], out["l2norm"]};
}

FamilyGolden load_golden(const std::string& family) {
  const auto& json = golden_file(family);
  FamilyGolden golden;
  if (json.contains("prompts")) {
    for (const auto& prompt : json["prompts"]) golden.prompts.push_back(row_from_decoder_oracle(prompt, prompt["ids"]));
    golden.batch_ids = json["batch"]["input_ids"].get<std::vector<std::vector<int64_t>>>();
    const auto masks = json["batch"]["attention_mask"].get<std::vector<std::vector<int64_t>>>();
    for (size_t r = 0; r < golden.batch_ids.size(); ++r) {
      std::vector<int64_t> ids(golden.batch_ids[r].begin(), golden.batch_ids[r].begin() + json["batch"]["rows"][r]["length"].get<int64_t>());
      EXPECT_EQ(static_cast<int64_t>(ids.size()), std::accumulate(masks[r].begin(), masks[r].end(), int64_t{0}));
      golden.batch_rows.push_back(row_from_decoder_oracle(json["batch"]["rows"][r], ids));
    }
    return golden;
  }
  for (const auto& c : json["cases"]) {
    const auto ids = c["input_ids"].get<std::vector<std::vector<int64_t>>>();
    const auto masks = c["attention_mask"].get<std::vector<std::vector<int64_t>>>();
    const bool batch = ids.size() > 1;
    if (batch) golden.batch_ids = ids;
    for (size_t r = 0; r < ids.size(); ++r) {
      int64_t length = 0;
      for (int64_t m : masks[r]) length += m;
      GoldenRow row = row_from_llamafam(c["name"], c["rows"][r], {ids[r].begin(), ids[r].begin() + length});
      (batch ? golden.batch_rows : golden.prompts).push_back(std::move(row));
    }
  }
  return golden;
}

std::unique_ptr<CausalLM> load_family(const std::string& family) {
  LoadOptions options;
  options.device = c10::Device(test::test_device());
  return load_causal_lm(test::shared_path("reference/" + family), options);
}

// Compares one row's values; logits [L, V], keys [L, F], outputs [L, D] at its real positions.
void expect_row_matches(const GoldenRow& golden, const at::Tensor& logits, const at::Tensor& keys,
                        const at::Tensor& outputs, const std::string& what) {
  EXPECT_TRUE(test::all_close_abs(logits.slice(1, 0, 64), test::json_to_tensor(golden.logits_first64), 1e-4,
                                  what + " logits[:, :64]"));
  EXPECT_TRUE(test::all_close_abs(at::logsumexp(logits, -1), test::json_to_tensor(golden.logsumexp), 1e-4,
                                  what + " logsumexp"));
  // Random models' logits are nearly flat: argmax is compared where the top-two gap exceeds the tolerance
  // (the recorded gap, or this model's own where the file does not record it).
  auto top2 = std::get<0>(logits.topk(2, -1));
  for (int64_t t = 0; t < logits.size(0); ++t) {
    const double gap = golden.top2_gap.is_null() ? (top2[t][0] - top2[t][1]).item<double>()
                                                 : golden.top2_gap[t].get<double>();
    if (gap > 2e-4)
      EXPECT_EQ(logits[t].argmax().item<int64_t>(), golden.argmax[t].get<int64_t>()) << what << " argmax at " << t;
  }
  at::Tensor log_probs = at::log_softmax(logits, -1);
  for (size_t t = 0; t + 1 < golden.ids.size(); ++t)
    EXPECT_NEAR(log_probs[t][golden.ids[t + 1]].item<double>(), golden.next_token_logprobs[t].get<double>(), 1e-4)
        << what << " next-token log-prob at " << t;
  for (int64_t t = 0; t < keys.size(0); ++t) {
    const std::string at_t = what + " position " + std::to_string(t);
    EXPECT_TRUE(test::all_close_rel(keys[t].slice(0, 0, 32), test::json_to_tensor(golden.key_first32[t]), 1e-4,
                                    at_t + " key[:32]"));
    EXPECT_TRUE(test::scalar_close_rel(keys[t].norm().item<double>(), golden.key_norm[t].get<double>(), 1e-4,
                                       at_t + " |key|"));
    EXPECT_TRUE(test::all_close_rel(outputs[t].slice(0, 0, 32), test::json_to_tensor(golden.out_first32[t]), 1e-4,
                                    at_t + " down_proj output[:32]"));
    EXPECT_TRUE(test::scalar_close_rel(outputs[t].norm().item<double>(), golden.out_norm[t].get<double>(), 1e-4,
                                       at_t + " |down_proj output|"));
  }
}

// Forward with the layer-1 rewrite module's input and output captured at every real position of every row.
struct RowsForward {
  at::Tensor logits;                   // [B, T, V]
  std::vector<at::Tensor> keys, outputs;  // per row: [L_r, F], [L_r, D]
};

RowsForward forward_capturing(const CausalLM& model, const at::Tensor& ids, const std::vector<int64_t>& lengths) {
  ForwardOptions options;
  options.intervention.layer = 1;
  for (int64_t r = 0; r < static_cast<int64_t>(lengths.size()); ++r)
    for (int64_t t = 0; t < lengths[r]; ++t) options.intervention.capture_at.push_back({r, t});
  at::NoGradGuard no_grad;
  ForwardOutput out = model.forward(ids.to(model.device()), options);
  RowsForward result{out.logits.cpu(), {}, {}};
  int64_t start = 0;
  for (int64_t length : lengths) {
    result.keys.push_back(out.captured_keys.slice(0, start, start + length).cpu());
    result.outputs.push_back(out.captured_outputs.slice(0, start, start + length).cpu());
    start += length;
  }
  return result;
}

class FamilyForward : public ::testing::TestWithParam<std::string> {};

TEST_P(FamilyForward, PromptsMatchGolden) {
  ROME_REQUIRE_SHARED();
  const std::string family = GetParam();
  auto model = load_family(family);
  auto tokenizer = load_tokenizer(test::shared_path("tokenizers/gpt2"));
  const auto& json = golden_file(family);
  const FamilyGolden golden = load_golden(family);
  ASSERT_GE(golden.prompts.size(), 4u);
  for (size_t p = 0; p < golden.prompts.size(); ++p) {
    const GoldenRow& row = golden.prompts[p];
    const auto& source = json.contains("prompts") ? json["prompts"][p] : json["cases"][p];
    EXPECT_EQ(tokenizer->encode(source["text"].get<std::string>(), false), row.ids) << family << " " << row.name;
    const int64_t length = static_cast<int64_t>(row.ids.size());
    RowsForward out = forward_capturing(*model, at::tensor(row.ids, at::kLong).unsqueeze(0), {length});
    expect_row_matches(row, out.logits[0], out.keys[0], out.outputs[0], family + " " + row.name);
  }
}

TEST_P(FamilyForward, RightPaddedBatchMatchesGolden) {
  ROME_REQUIRE_SHARED();
  const std::string family = GetParam();
  auto model = load_family(family);
  const FamilyGolden golden = load_golden(family);
  ASSERT_EQ(golden.batch_rows.size(), 2u);
  std::vector<int64_t> lengths;
  for (const auto& row : golden.batch_rows) lengths.push_back(static_cast<int64_t>(row.ids.size()));
  ASSERT_NE(lengths[0], lengths[1]);  // a padded row
  const int64_t width = static_cast<int64_t>(golden.batch_ids[0].size());
  std::vector<int64_t> flat;
  for (const auto& ids : golden.batch_ids) flat.insert(flat.end(), ids.begin(), ids.end());
  RowsForward out = forward_capturing(*model, at::tensor(flat, at::kLong).view({2, width}), lengths);
  for (size_t r = 0; r < 2; ++r)
    expect_row_matches(golden.batch_rows[r], out.logits[r].slice(0, 0, lengths[r]), out.keys[r], out.outputs[r],
                       family + " padded row " + std::to_string(r));
}

// The KV cache (prefix, then the rest; then token by token as generation does, the cache growing past
// Mistral's window of 8) and ragged rows give the plain forward pass's logits and keys.
TEST_P(FamilyForward, CachedAndRaggedPassesEqualTheFullPass) {
  ROME_REQUIRE_SHARED();
  const std::string family = GetParam();
  auto model = load_family(family);
  const FamilyGolden golden = load_golden(family);
  const std::vector<int64_t>& ids = golden.prompts[3].ids;  // the 40-token prompt
  ASSERT_GT(ids.size(), 20u);
  at::Tensor batch = at::tensor(ids, at::kLong).unsqueeze(0).to(model->device());
  at::NoGradGuard no_grad;
  at::Tensor full = model->forward(batch).logits[0];

  KVCache cache;
  ForwardOptions prefix;
  prefix.record = &cache;
  model->forward(batch.slice(1, 0, 12), prefix);
  ForwardOptions rest;
  rest.past = &cache;
  EXPECT_TRUE(test::all_close_abs(model->forward(batch.slice(1, 12), rest).logits[0], full.slice(0, 12), 1e-5,
                                  family + " prefix cache"));

  KVCache step_cache;
  for (int64_t t = 0; t < batch.size(1); ++t) {
    ForwardOptions step;
    step.past = t > 0 ? &step_cache : nullptr;
    KVCache next;
    step.record = &next;
    at::Tensor logits = model->forward(batch.slice(1, t, t + 1), step).logits[0][0];
    step_cache = next;
    EXPECT_TRUE(test::all_close_abs(logits, full[t], 1e-5, family + " token-by-token step " + std::to_string(t)));
  }

  // Ragged rows: row r recomputes from starts[r] on, attending to its own cached earlier positions.
  std::vector<std::vector<int64_t>> rows = {golden.prompts[2].ids, ids};
  const std::vector<int64_t> starts = {3, 9};
  test::expect_ragged_rows_match_full_pass(*model, rows, starts, 1, 9, family);
}

// Greedy generation (one token at a time against the growing KV cache, 20 steps: past Mistral's window)
// picks what a full forward pass over the final sequence picks at every generated position.
TEST_P(FamilyForward, GreedyGenerationAgreesWithTheFullPass) {
  ROME_REQUIRE_SHARED();
  const std::string family = GetParam();
  auto model = load_family(family);
  const std::vector<int64_t> prompt = load_golden(family).prompts[1].ids;
  GenerationOptions options;
  options.max_new_tokens = 20;
  std::vector<int64_t> generated = generate(*model, prompt, options);
  ASSERT_EQ(generated.size(), 20u);
  std::vector<int64_t> sequence = prompt;
  sequence.insert(sequence.end(), generated.begin(), generated.end());
  at::NoGradGuard no_grad;
  at::Tensor logits = model->forward(at::tensor(sequence, at::kLong).unsqueeze(0).to(model->device())).logits[0].cpu();
  for (size_t i = 0; i < generated.size(); ++i) {
    at::Tensor row = logits[prompt.size() - 1 + i];
    auto top2 = std::get<0>(row.topk(2));
    if ((top2[0] - top2[1]).item<double>() > 1e-4)
      EXPECT_EQ(row.argmax().item<int64_t>(), generated[i]) << family << " generated token " << i;
  }
}

// Perplexity over the 40-token prompt (five times Mistral's window) equals the golden next-token log-probs.
TEST_P(FamilyForward, PerplexityMatchesGoldenLogProbs) {
  ROME_REQUIRE_SHARED();
  const std::string family = GetParam();
  auto model = load_family(family);
  const FamilyGolden golden = load_golden(family);
  std::vector<std::vector<int64_t>> texts;
  std::vector<double> expected;
  for (const auto& row : golden.prompts) {
    if (row.ids.size() < 2) continue;
    texts.push_back(row.ids);
    double sum = 0;
    for (const auto& lp : row.next_token_logprobs) sum += lp.get<double>();
    expected.push_back(std::exp(-sum / double(row.ids.size() - 1)));
  }
  PerplexitySummary summary = perplexity(*model, texts, 2);
  ASSERT_EQ(summary.per_text.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_TRUE(test::scalar_close_rel(summary.per_text[i], expected[i], 1e-4, family + " perplexity " + std::to_string(i)));
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyForward,
                         ::testing::Values("gpt_neox", "opt", "qwen2", "mistral", "llama3"));

// Mistral's window changes the logits from the window's end on (the golden values say so too):
// dropping it from config.json must move them, so the tests above would see a missing window.
TEST(SlidingWindow, MistralWithoutItsWindowDiffersFromPositionEight) {
  ROME_REQUIRE_SHARED();
  Checkpoint checkpoint = load_checkpoint(test::shared_path("reference/mistral"), at::kFloat);
  ASSERT_EQ(checkpoint.config.sliding_window, 8);
  auto windowed = build_causal_lm(checkpoint);
  checkpoint.config.sliding_window = 0;
  auto unwindowed = build_causal_lm(checkpoint);
  const std::vector<int64_t> ids = load_golden("mistral").prompts[3].ids;
  at::Tensor batch = at::tensor(ids, at::kLong).unsqueeze(0);
  at::NoGradGuard no_grad;
  at::Tensor a = windowed->forward(batch).logits[0], b = unwindowed->forward(batch).logits[0];
  EXPECT_TRUE(test::all_close_abs(a.slice(0, 0, 8), b.slice(0, 0, 8), 1e-6, "before the window's end"));
  EXPECT_GT((a.slice(0, 8) - b.slice(0, 8)).abs().max().item<double>(), 1e-2);
}

}  // namespace
}  // namespace rc
