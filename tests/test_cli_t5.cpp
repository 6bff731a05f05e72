// `keys`, `check` and `stats` on the reference T5 models end to end (the paper's Experiment 5 as
// one command per model), `edit` refused naming what supports T5, and generated templates refused.
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/io/npz.h"
#include "rome_collapse/text/tokenizer.h"
#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace rc {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::run_cli;

std::string quoted(const fs::path& path) { return "'" + path.string() + "'"; }

// The shipped Experiment 5 config with the model replaced (absolute paths: the copy lives elsewhere).
fs::path experiment5_config(const fs::path& dir, const std::string& variant, json changes = json::object()) {
  json config = json::parse(read_file(fs::path(ROME_SOURCE_DIR) / "configs/experiment5-t5-v1_0.json"));
  config["model"] = test::shared_path("reference/t5/" + variant).string();
  config["dataset"] = (fs::path(ROME_SOURCE_DIR) / "data/experiment5_requests.json").string();
  config.update(changes);
  const fs::path path = dir / ("config_" + variant + ".json");
  write_file_atomic(path, config.dump(1));
  return path;
}

class T5Cli : public ::testing::TestWithParam<std::string> {};

TEST_P(T5Cli, KeysReportsTheEncoderKeysOfBothGroups) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("t5_keys_" + GetParam());
  const fs::path out = dir / "keys.npz", report = dir / "keys.json";
  auto result = run_cli("keys --config " + quoted(experiment5_config(dir, GetParam())) + " --out " + quoted(out) +
                        " --json " + quoted(report) + " --prefix-tokens 1 2");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("first-token experiment"), std::string::npos) << result.out;
  const json analysis = json::parse(read_file(report));
  EXPECT_NE(analysis["provenance"]["architecture"].get<std::string>().find("T5"), std::string::npos);
  EXPECT_EQ(analysis["provenance"]["rewrite_weight"], "encoder.block.1.layer.1.DenseReluDense.wo.weight");
  ASSERT_EQ(analysis["requests"].size(), 12u);
  EXPECT_EQ(analysis["summary"]["subject_first"]["requests"], 6);
  EXPECT_EQ(analysis["summary"]["subject_later"]["requests"], 6);
  for (const json& r : analysis["requests"]) {
    EXPECT_TRUE(r["relative_distance"].is_number()) << r["request"];
    EXPECT_TRUE(r["cos_unprefixed_prefixed"].is_number()) << r["request"];
    // Relative positions: shifting position ids leaves the key exactly where it was.
    if (!r["subject_first"].get<bool>()) continue;
    for (const json& probe : r["position_experiment"])
      EXPECT_NEAR(probe["shifted_positions"]["fraction_closed"].get<double>(), 0.0, 1e-5) << r["request"];
  }
  const auto members = read_npz(out);
  const at::Tensor keys = members.at("prefixed_keys").tensor();
  const int64_t d_ff = GetParam() == "v1_0" ? 128 : 96;
  EXPECT_EQ(keys.sizes(), at::IntArrayRef({12, 21, d_ff}));
}

TEST_P(T5Cli, CheckGivesDenominatorsAndTheDecoderExitCodes) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("t5_check_" + GetParam());
  const fs::path config = experiment5_config(dir, GetParam()), report = dir / "check.json";
  auto result = run_cli("check --config " + quoted(config) + " --json " + quoted(report));
  ASSERT_TRUE(result.exit_code == 0 || result.exit_code == 1) << result.err;
  const json checked = json::parse(read_file(report));
  EXPECT_EQ(result.exit_code == 0, checked["passed"].get<bool>());
  ASSERT_EQ(checked["requests"].size(), 12u);
  for (const json& r : checked["requests"]) {
    EXPECT_TRUE(r["rome_denominator"].is_number());
    EXPECT_GT(r["c_rome_denominator"].get<double>(), 0.0) << "k̄ · k̄ without statistics";
  }
  // Thresholds that nothing fails and that everything fails: exit 0 and 1, as for decoders.
  EXPECT_EQ(run_cli("check --config " + quoted(config) + " --min-ratio 0").exit_code, 0);
  EXPECT_EQ(run_cli("check --config " + quoted(config) + " --min-ratio 0 --min-abs-denominator 1e12").exit_code, 1);
  // Layer outside the encoder (3 blocks): exit 2 naming the encoder.
  auto out_of_range = run_cli("check --config " + quoted(experiment5_config(dir, GetParam(), {{"hparams", {{"layer", 3}}}})));
  EXPECT_EQ(out_of_range.exit_code, 2);
  EXPECT_NE(out_of_range.err.find("3 encoder layers"), std::string::npos) << out_of_range.err;
}

TEST_P(T5Cli, StatsCollectsTheEncoderKeysOfEveryInputToken) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("t5_stats_" + GetParam());
  const fs::path corpus = dir / "corpus.txt", out = dir / "mom2.npz";
  const std::vector<std::string> texts = {"Once upon a time there was a little girl.", "She liked to play in the park."};
  write_file_atomic(corpus, texts[0] + "\n" + texts[1] + "\n");
  const fs::path model = test::shared_path("reference/t5/" + GetParam());
  auto result = run_cli("stats --model " + quoted(model) + " --layer 2 --corpus " + quoted(corpus) + " --out " + quoted(out));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.err.find("encoder.block.2.layer.1.DenseReluDense.wo.weight"), std::string::npos) << result.err;
  const auto members = read_npz(out);
  const int64_t d_ff = GetParam() == "v1_0" ? 128 : 96;
  EXPECT_EQ(members.at("mom2.mom2").tensor().sizes(), at::IntArrayRef({d_ff, d_ff}));
  // Every token of the model inputs, "</s>" included (as Hugging Face's T5 inputs end).
  auto tokenizer = load_tokenizer(model);
  int64_t tokens = 0;
  for (const std::string& text : texts) tokens += static_cast<int64_t>(tokenizer->encode(text, false).size()) + 1;
  EXPECT_EQ(members.at("mom2.count").tensor().reshape({}).item<int64_t>(), tokens);
}

INSTANTIATE_TEST_SUITE_P(Variants, T5Cli, ::testing::Values("v1_0", "v1_1"));

TEST(T5CliRefusals, EditAndGenerateAreRefusedNamingWhatSupportsT5) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("t5_edit");
  const json config = {{"model", test::shared_path("reference/t5/v1_0").string()},
                       {"request", {{"prompt", "{} is a"}, {"subject", "Kitty"}, {"target_new", "cat"}}},
                       {"hparams", {{"layer", 1}, {"v_loss_layer", 2}}},
                       {"context_templates", {"{}"}}};
  write_file_atomic(dir / "edit.json", config.dump());
  auto edit = run_cli("edit --config " + quoted(dir / "edit.json") + " --out " + quoted(dir / "result.json"));
  EXPECT_EQ(edit.exit_code, 2) << edit.out;
  for (const char* needle : {"keys", "check", "stats", "not by edit"})
    EXPECT_NE(edit.err.find(needle), std::string::npos) << needle << " in " << edit.err;
  auto generate = run_cli("generate --model " + quoted(test::shared_path("reference/t5/v1_0")) + " --max-new-tokens 3");
  EXPECT_EQ(generate.exit_code, 2);
  EXPECT_NE(generate.err.find("keys"), std::string::npos) << generate.err;
}

TEST(T5CliRefusals, GeneratedTemplatesAreRefusedForT5) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("t5_generated_templates");
  auto result = run_cli("check --config " + quoted(experiment5_config(dir, "v1_0", {{"context_templates", {{"generate", json::object()}}}})));
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("context_templates"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("causal decoder"), std::string::npos) << result.err;
}

}  // namespace
}  // namespace rc
