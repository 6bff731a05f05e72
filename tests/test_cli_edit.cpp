// `rome-collapse edit` end to end: the demo, reproducibility, outputs (--save-delta,
// --save-model) and every refusal path (exit code, message, no result file left behind).
#include <nlohmann/json.hpp>

#include "rome_collapse/io/safetensors.h"
#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/rome/convergence.h"
#include "rome_collapse/rome/edit.h"
#include "rome_collapse/util/files.h"
#include "support/golden.h"

namespace rc {
namespace {

std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

// The golden subject-first GPT-2 request on the reference model, 5 steps to stay fast.
nlohmann::json reference_config() {
  const auto& golden = test::golden_reference()["gpt2"];
  return {{"model", test::reference_model_dir("gpt2")},
          {"tokenizer", test::shared_path("tokenizers/gpt2").string()},
          {"add_bos", false},
          {"method", "rome"},
          {"request", golden["cases"][0]["request"]},
          {"hparams", {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 5}}},
          {"context_templates", golden["context_templates"]}};
}

std::filesystem::path write_config(const std::string& name, const nlohmann::json& config) {
  auto dir = test::scratch_dir("edit-" + name);
  write_file_atomic(dir / "config.json", config.dump(2));
  return dir;
}

TEST(EditCommand, DemoRunsOnTheEmbeddedModel) {
  auto dir = test::scratch_dir("edit-demo");
  auto result = test::run_cli("edit --config " + quoted(std::filesystem::path(ROME_SOURCE_DIR) / "configs/demo.json") +
                              " --out " + quoted(dir / "demo.json"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  auto json = nlohmann::json::parse(read_file(dir / "demo.json"));
  ASSERT_EQ(json["results"].size(), 6u);  // 2 requests x 3 methods
  // The subject-first request shows the mechanism even in this random model.
  const auto& rome = json["results"][0];
  const auto& c_rome = json["results"][1];
  EXPECT_TRUE(rome["subject_first_token"].get<bool>());
  EXPECT_EQ(rome["method"], "rome");
  EXPECT_EQ(c_rome["method"], "c-rome");
  EXPECT_LT(std::abs(rome["denominator"].get<double>()), 0.5 * std::abs(c_rome["denominator"].get<double>()));
  EXPECT_GT(rome["update_norm"].get<double>(), 2 * c_rome["update_norm"].get<double>());
  EXPECT_NE(result.out.find("c-rome-prefix"), std::string::npos);  // the side-by-side table
  // Under the demo's settings every edit takes: the target becomes the model's prediction, the
  // v* loss falls, and nothing is flagged.
  for (const auto& r : json["results"]) {
    EXPECT_GT(r["efficacy"].get<double>(), 0.0) << r["method"] << " " << r["request"]["subject"];
    EXPECT_TRUE(r["convergence"]["took"].get<bool>()) << r["convergence"].dump();
    EXPECT_LT(r["convergence"]["v_loss_final"].get<double>(), r["convergence"]["v_loss_initial"].get<double>());
  }
  EXPECT_EQ(result.err.find("warning:"), std::string::npos) << result.err;
}

// The paper's GPT-2-XL v* settings on the embedded random model: the loss rises (the first Adam step
// lands far outside the clamp radius of this model's tiny ‖target_init‖) and the target does not
// become the prediction. The result says so, and so does stderr.
TEST(EditCommand, NonTakingEditIsFlagged) {
  auto config = nlohmann::json::parse(read_file(std::filesystem::path(ROME_SOURCE_DIR) / "configs/demo.json"));
  config.erase("requests");
  config.erase("methods");
  config.erase("perplexity");
  config["request"] = {{"prompt", "{} is a citizen of"}, {"subject", "Leonardo"}, {"target_new", "Japan"}};
  config["hparams"]["v_lr"] = 0.5;
  config["hparams"]["v_weight_decay"] = 0.5;
  config["hparams"]["clamp_norm_factor"] = 4;
  auto dir = write_config("not-taking", config);
  auto result = test::run_cli("edit --config " + quoted(dir / "config.json") + " --out " + quoted(dir / "result.json"));
  ASSERT_EQ(result.exit_code, 0) << result.err;  // a failed edit is a result, flagged, not an error
  const auto json = nlohmann::json::parse(read_file(dir / "result.json"))["results"][0];  // schema_version 2
  const auto& convergence = json["convergence"];
  EXPECT_EQ(json["efficacy"], 0.0);
  EXPECT_FALSE(convergence["took"].get<bool>()) << convergence.dump();
  EXPECT_TRUE(convergence["loss_rose"].get<bool>()) << convergence.dump();
  EXPECT_GT(convergence["v_loss_final"].get<double>(), convergence["v_loss_initial"].get<double>());
  EXPECT_NE(result.err.find("warning: rome edit of \"Leonardo is a citizen of\" -> Japan: the v* optimisation diverged"),
            std::string::npos)
      << result.err;
  EXPECT_NE(result.out.find("NO"), std::string::npos) << "the table's took column";
}

TEST(Convergence, VerdictFromTheOptimisationAndTheTargetScores) {
  ValueOptimization value;
  value.loss = {6.6, 5.0, 4.0};
  value.nll = {6.6, 4.9, 3.9};
  Convergence took = assess_convergence(value, 1.0, 6.5, 4.0);
  EXPECT_TRUE(took.took());
  EXPECT_TRUE(took.warnings.empty());
  // Efficacy 0 and the target's NLL not lower: wrote nothing, whatever the optimisation did.
  Convergence nothing = assess_convergence(value, 0.0, 6.5, 6.5);
  EXPECT_TRUE(nothing.wrote_nothing);
  EXPECT_FALSE(nothing.took());
  ASSERT_EQ(nothing.warnings.size(), 1u);
  EXPECT_NE(nothing.warnings[0].find("wrote nothing"), std::string::npos);
  // Efficacy 0 but the NLL fell: not "wrote nothing" (the edit moved the target).
  EXPECT_FALSE(assess_convergence(value, 0.0, 6.5, 6.0).wrote_nothing);
  // A rising loss fails the edit even where it moved the target.
  value.loss = {6.6, 31.8, 25.6};
  Convergence diverged = assess_convergence(value, 1.0, 6.5, 4.0);
  EXPECT_TRUE(diverged.loss_rose);
  EXPECT_FALSE(diverged.took());
  EXPECT_EQ(diverged.v_loss_max, 31.8);
  const auto json = to_json(diverged);
  EXPECT_EQ(json["took"], false);
  EXPECT_EQ(json["warnings"].size(), 1u);
  // Not evaluated: only the optimisation is judged.
  EXPECT_TRUE(to_json(assess_convergence(value, std::nullopt, std::nullopt, std::nullopt))["efficacy"].is_null());
}

TEST(EditCommand, TimingsAndPeakMemoryPerPhase) {
  auto dir = test::scratch_dir("edit-phases");
  auto result = test::run_cli("edit --config " + quoted(std::filesystem::path(ROME_SOURCE_DIR) / "configs/demo.json") +
                              " --out " + quoted(dir / "demo.json"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto first = nlohmann::json::parse(read_file(dir / "demo.json"))["results"][0];
  for (const char* phase : {"keys", "left_vector", "value_optimisation", "update", "evaluation", "perplexity"}) {
    ASSERT_TRUE(first["timings_s"].contains(phase)) << phase;
    EXPECT_GE(first["timings_s"][phase].get<double>(), 0.0) << phase;
    ASSERT_TRUE(first["peak_memory_mib"].contains(phase)) << phase;
    EXPECT_GT(first["peak_memory_mib"][phase].get<double>(), 1.0) << phase;  // a process holds more than 1 MiB
  }
}

TEST(EditCommand, SameConfigTwiceIsByteIdentical) {
  ROME_REQUIRE_SHARED();
  auto config = reference_config();
  config["record_timings"] = false;
  config["context_templates"] = {{"generate", {{"seed", 3}, {"lengths", {{5, 5}, {8, 5}}}}}};
  config["perplexity"] = {{"texts", test::shared_path("data/me-ppl/ME-PPL_50.json").string()}};
  config["method"] = "c-rome-prefix";
  auto dir = write_config("twice", config);
  auto first = test::run_cli("edit --config " + quoted(dir / "config.json") + " --out " + quoted(dir / "a.json"));
  auto second = test::run_cli("edit --config " + quoted(dir / "config.json") + " --out " + quoted(dir / "b.json"));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(read_file(dir / "a.json"), read_file(dir / "b.json"));
  const auto document = nlohmann::json::parse(read_file(dir / "a.json"));
  EXPECT_EQ(document["schema_version"], kResultSchemaVersion);
  ASSERT_EQ(document["results"].size(), 1u);  // one shape for one edit or many
  const auto& json = document["results"][0];
  EXPECT_EQ(json["context_templates"].size(), 11u);  // "{}" + 5 + 5 generated
  EXPECT_FALSE(json.contains("timings_s"));
  EXPECT_FALSE(json.contains("peak_memory_mib"));
  for (const char* key : {"method", "layer", "subject_last_index", "subject_first_token", "denominator", "abs_denominator",
                          "numerator_norm", "update_norm", "relative_update_norm", "right_vector_norm",
                          "cos_unprefixed_prefixed", "unprefixed_key_norm", "prefixed_key_norm", "perplexity_before",
                          "perplexity_after", "logprob_target_new_after", "logprob_target_true_after", "efficacy",
                          "collapse", "context_templates", "provenance"})
    EXPECT_TRUE(json.contains(key)) << key;
  EXPECT_EQ(json["provenance"]["config_sha256"], sha256_file(dir / "config.json"));
  EXPECT_NE(json["efficacy_prompt"].get<std::string>(), "Leonardo is a citizen of");  // test-time prefix
}

TEST(EditCommand, SavesDeltaAndEditedModel) {
  ROME_REQUIRE_SHARED();
  auto config = reference_config();
  config["dump_vectors"] = true;
  auto dir = write_config("save", config);
  auto result = test::run_cli("edit --config " + quoted(dir / "config.json") + " --out " + quoted(dir / "r.json") +
                              " --save-delta " + quoted(dir / "delta.safetensors") + " --save-model " + quoted(dir / "edited"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  auto json = nlohmann::json::parse(read_file(dir / "r.json"))["results"][0];
  auto delta = SafetensorsFile::open(dir / "delta.safetensors");
  at::Tensor u = delta.tensor("left_vector", at::kFloat), v = delta.tensor("right_vector", at::kFloat);
  EXPECT_TRUE(test::all_close_abs(u, test::json_to_tensor(json["vectors"]["left_vector"]), 1e-7, "u"));
  auto original = load_causal_lm(test::reference_model_dir("gpt2"));
  auto edited = load_causal_lm(dir / "edited");
  at::Tensor expected = original->rewrite_weight(1) + at::outer(v, u);  // [D, F]
  EXPECT_TRUE(test::all_close_abs(edited->rewrite_weight(1), expected, 1e-6, "edited W"));
  EXPECT_TRUE(at::equal(edited->rewrite_weight(0), original->rewrite_weight(0)));
}

void expect_refusal(const std::string& name, const nlohmann::json& config, int exit_code,
                    const std::vector<std::string>& message_parts) {
  auto dir = write_config(name, config);
  auto result = test::run_cli("edit --config " + quoted(dir / "config.json") + " --out " + quoted(dir / "result.json"));
  EXPECT_EQ(result.exit_code, exit_code) << name << ": " << result.err;
  for (const auto& part : message_parts)
    EXPECT_NE(result.err.find(part), std::string::npos) << name << ": missing '" << part << "' in: " << result.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "result.json")) << name << ": a result file was left behind";
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos) << name << ": temporary file left";
}

TEST(EditCommand, RefusesBadInputsWithoutLeavingAResult) {
  ROME_REQUIRE_SHARED();
  auto config = reference_config();
  auto with = [&](const std::function<void(nlohmann::json&)>& change) {
    nlohmann::json copy = config;
    change(copy);
    return copy;
  };
  expect_refusal("empty-target", with([](auto& c) { c["request"]["target_new"] = ""; }), 2, {"target_new", "empty"});
  expect_refusal("layer-range", with([](auto& c) { c["hparams"]["layer"] = 9; }), 2, {"hparams.layer", "9"});
  expect_refusal("subject-missing", with([](auto& c) { c["request"] = {{"prompt", "Paris is in"}, {"subject", "Rome"}, {"target_new", "Italy"}}; }),
                 2, {"subject", "Rome", "not in the prompt"});
  std::string long_prompt = "{} is";
  for (int i = 0; i < 300; ++i) long_prompt += " very";
  expect_refusal("too-long", with([&](auto& c) { c["request"]["prompt"] = long_prompt + " a citizen of"; }), 2,
                 {"context"});
  expect_refusal("unknown-field", with([](auto& c) { c["hparams"]["layr"] = 1; }), 2, {"hparams", "layr"});
  expect_refusal("unknown-method", with([](auto& c) { c["method"] = "memit"; }), 2, {"method", "memit"});
  expect_refusal("missing-model", with([](auto& c) { c["model"] = "/nonexistent/model"; }), 2, {"/nonexistent/model"});
  // A weight decay of 1e300 would overflow float32 (inf * ||0|| = NaN at the first iteration); the
  // documented bound on the hyper-parameter factors (limits.h) refuses it before any work starts.
  // Non-finite numbers that do reach the model (weights) are exit 3: test_faults.
  expect_refusal("non-finite", with([](auto& c) { c["hparams"]["v_weight_decay"] = 1e300; }), 2,
                 {"hparams.v_weight_decay", "above the bound"});

  auto dir = test::scratch_dir("edit-malformed-json");
  write_file_atomic(dir / "config.json", "{\"model\": ");
  auto result = test::run_cli("edit --config " + quoted(dir / "config.json"));
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("config.json"), std::string::npos) << result.err;
}

TEST(EditCommand, PromptWithoutPlaceholderIsAccepted) {
  ROME_REQUIRE_SHARED();
  auto config = reference_config();
  config["request"] = {{"prompt", "Leonardo is a citizen of"}, {"subject", "Leonardo"}, {"target_new", "Japan"}};
  auto dir = write_config("no-placeholder", config);
  auto result = test::run_cli("edit --config " + quoted(dir / "config.json") + " --out " + quoted(dir / "r.json"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(nlohmann::json::parse(read_file(dir / "r.json"))["results"][0]["request"]["prompt"], "{} is a citizen of");
}

}  // namespace
}  // namespace rc
