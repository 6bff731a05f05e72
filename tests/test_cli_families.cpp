// The commands on the newer families' reference models (../shared/reference/<family>, GPT-2 BPE
// ids): a full edit with each method (ROME, C-ROME, C-ROME + prefix) through the library, `check`,
// `generate`, `perplexity` and `keys` through the CLI.
#include <cmath>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/experiment/edit_config.h"
#include "rome_collapse/rome/edit.h"
#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace rc {
namespace {

std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

const std::vector<std::string> kFamilies = {"gpt_neox", "opt", "qwen2", "mistral", "llama3"};

// Three of ME-PPL_50's kind of sentences as plain lines (the whole file costs minutes over 15 edits).
std::filesystem::path perplexity_texts() {
  auto path = test::scratch_dir("families-texts") / "texts.txt";
  write_file_atomic(path, "The city council approved the new budget after a long debate on Tuesday evening.\n"
                          "She spent the summer learning to play the violin with her grandmother.\n"
                          "Researchers found that the bridge had been built with materials from three quarries.\n");
  return path;
}

nlohmann::json family_config(const std::string& family) {
  return {{"model", test::shared_path("reference/" + family).string()},
          {"tokenizer", test::shared_path("tokenizers/gpt2").string()},
          {"add_bos", false},
          {"method", "rome"},
          {"request", {{"prompt", "{} is a citizen of"}, {"subject", "Leonardo da Vinci"},
                       {"target_new", "Japan"}, {"target_true", "Italy"}}},
          {"hparams", {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 4}}},
          {"context_templates", {"{}", "The company. {}", "Because of this. {}", "I think. {}", "You know. {}"}},
          {"perplexity", {{"texts", perplexity_texts().string()}, {"batch_size", 3}}},
          {"record_timings", false}};
}

TEST(FamilyEdits, RomeCromeAndPrefixRunOnEveryNewFamily) {
  ROME_REQUIRE_SHARED();
  for (const std::string& family : kFamilies) {
    EditConfig config = parse_edit_config(family_config(family), "families:" + family, ".");
    LoadedModel loaded = load_model(config.model, config.tokenizer, config.add_bos, "cpu", "float32");
    const at::Tensor before = loaded.model->rewrite_weight(1).clone();
    EXPECT_NE(base_provenance(loaded, config)["architecture"], "GPT-2") << family;
    EditContext context = prepare_edit_context(loaded, config);
    for (EditMethod method : {EditMethod::Rome, EditMethod::CRome, EditMethod::CRomePrefix}) {
      EditOutcome outcome = run_edit(loaded, config, config.request, method, context);
      const auto& result = outcome.result;
      const std::string what = family + " " + result["method"].get<std::string>();
      EXPECT_EQ(result["method"], to_string(method)) << what;
      EXPECT_TRUE(std::isfinite(result["denominator"].get<double>())) << what;
      EXPECT_GT(result["update_norm"].get<double>(), 0.0) << what;
      EXPECT_TRUE(std::isfinite(result["perplexity_after"]["mean"].get<double>())) << what << result.dump();
      EXPECT_EQ(outcome.update.delta_weight().sizes(), loaded.model->rewrite_weight(1).sizes()) << what;
      EXPECT_TRUE(at::equal(loaded.model->rewrite_weight(1), before)) << what << ": W restored after the edit";
    }
  }
}

TEST(FamilyCli, CheckGenerateAndPerplexityOnEveryNewFamily) {
  ROME_REQUIRE_SHARED();
  const std::string tokenizer = " --tokenizer " + quoted(test::shared_path("tokenizers/gpt2"));
  for (const std::string& family : kFamilies) {
    auto dir = test::scratch_dir("families-cli-" + family);
    nlohmann::json config = family_config(family);
    config.erase("request");
    config.erase("method");
    config.erase("perplexity");
    config["requests"] = {{{"prompt", "{} is a citizen of"}, {"subject", "Leonardo"}, {"target_new", "Japan"}},
                          {{"prompt", "The mother tongue of {} is"}, {"subject", "Danielle Darrieux"},
                           {"target_new", "English"}}};
    write_file_atomic(dir / "config.json", config.dump(1));
    auto check = test::run_cli("check --config " + quoted(dir / "config.json") + " --min-ratio 0 --json " +
                               quoted(dir / "check.json"));
    EXPECT_EQ(check.exit_code, 0) << family << check.out << check.err;
    auto report = nlohmann::json::parse(read_file(dir / "check.json"));
    ASSERT_EQ(report["requests"].size(), 2u) << family;
    EXPECT_TRUE(std::isfinite(report["requests"][0]["rome_denominator"].get<double>())) << family;

    const std::string model = " --model " + quoted(test::shared_path("reference/" + family));
    // 16 new tokens after a 4-token prompt: Mistral's cache grows past its window of 8.
    auto generate = test::run_cli("generate" + model + tokenizer + " --prompt 'The quick brown fox' --max-new-tokens 16");
    EXPECT_EQ(generate.exit_code, 0) << family << generate.err;
    EXPECT_GT(generate.out.size(), 16u) << family << generate.out;  // the continuation

    auto perplexity = test::run_cli("perplexity" + model + tokenizer + " --texts " + quoted(perplexity_texts()));
    EXPECT_EQ(perplexity.exit_code, 0) << family << perplexity.err;
    EXPECT_EQ(nlohmann::json::parse(perplexity.out)["per_text"].size(), 3u) << family << perplexity.out;

    auto keys = test::run_cli("keys --config " + quoted(dir / "config.json") + " --out " + quoted(dir / "keys.npz") +
                              " --prefix-tokens 1 2");
    EXPECT_EQ(keys.exit_code, 0) << family << keys.err;
    EXPECT_TRUE(std::filesystem::exists(dir / "keys.npz")) << family;
  }
}

}  // namespace
}  // namespace rc
