// The paper's evaluation reproduced on a real model: the 48 single edits of
// shared/reference/golden_eval_stories260K.json (16 TinyStories requests x rome / c-rome /
// c-rome-prefix on stories260K, produced with the paper's EasyEdit-based code) run through
// `rome-collapse batch`. Pre/post efficacy, paraphrase accuracy and locality must equal the golden
// values exactly; perplexity after the edit and the denominator within 1e-2 relative.
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "support/test_support.h"

namespace rc {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;


TEST(EvalStories260K, ReproducesThePapersEvaluation) {
  ROME_REQUIRE_SHARED();
  const json golden = json::parse(test::read_if_exists(test::shared_path("reference/golden_eval_stories260K.json")));
  const fs::path dir = test::scratch_dir("eval-stories260k");

  // The 16 records, in their index order (the index picks c-rome-prefix's test-time template).
  std::map<int64_t, json> records;
  for (const auto& c : golden["cases"]) records[c["index"].get<int64_t>()] = c["record"];
  json dataset = json::array();
  for (const auto& [index, record] : records) {
    ASSERT_EQ(index, static_cast<int64_t>(dataset.size()));
    dataset.push_back(record);
  }
  std::ofstream(dir / "records.json") << dataset.dump(1);

  // hparams exactly as in the file, max_length (EasyEdit's evaluation truncation) included.
  const json config = {
      {"model", test::shared_path("models/stories260K/stories260K.bin").string()},
      {"tokenizer", test::shared_path("models/stories260K/tok512.model").string()},
      {"methods", {"rome", "c-rome", "c-rome-prefix"}},
      {"dataset", {{"path", (dir / "records.json").string()}, {"format", "easyedit"}}},
      {"hparams", golden["hparams"]},
      {"context_templates", golden["context_templates"]},
      {"perplexity", {{"texts", test::shared_path("data/corpus/tinystories_val.txt").string()}, {"batch_size", 10}}},
      {"perplexity_selection", {{"split", "paragraphs"}, {"longer_than", 80}, {"cut_at", 300}, {"first", 50}}}};
  std::ofstream(dir / "config.json") << config.dump(1);
  const auto result = test::run_cli("batch --config '" + (dir / "config.json").string() + "' --out '" +
                                    (dir / "out").string() + "'");
  ASSERT_EQ(result.exit_code, 0) << result.err;

  const json run = json::parse(test::read_if_exists(dir / "out" / "run.json"));
  const double ppl_before = run["perplexity_before"]["mean"].get<double>();
  EXPECT_NEAR(ppl_before, golden["ppl_before"].get<double>(), 1e-4 * golden["ppl_before"].get<double>());
  EXPECT_EQ(run["config"]["evaluation"]["max_length"], 40);

  std::map<std::pair<int64_t, std::string>, json> lines;
  std::istringstream in(test::read_if_exists(dir / "out" / "results.jsonl"));
  for (std::string line; std::getline(in, line);) {
    const json r = json::parse(line);
    lines[{r["position"].get<int64_t>(), r["method"].get<std::string>()}] = r;
  }
  ASSERT_EQ(lines.size(), golden["cases"].size());
  double worst_ppl = 0, worst_denominator = 0;
  for (const auto& c : golden["cases"]) {
    const auto key = std::make_pair(c["index"].get<int64_t>(), c["mode"].get<std::string>());
    ASSERT_TRUE(lines.count(key)) << "no result for case " << key.first << " " << key.second;
    const json& r = lines[key];
    const std::string what = "case " + std::to_string(key.first) + " " + key.second;
    // EasyEdit keeps one accuracy per prompt in a list; locality is already the mean.
    EXPECT_EQ(json::array({r["efficacy_pre"]}), c["pre_rewrite_acc"]) << what;
    EXPECT_EQ(r["pre"]["rephrase_acc"], c["pre_rephrase_acc"]) << what;
    EXPECT_EQ(json::array({r["efficacy"]}), c["rewrite_acc"]) << what;
    EXPECT_EQ(r["post"]["rephrase_acc"], c["rephrase_acc"]) << what;
    EXPECT_EQ(r["locality"], c["locality_acc"]) << what;
    if (!c["prefix"].is_null()) {
      const std::string prefix = c["prefix"].get<std::string>();
      EXPECT_EQ(r["efficacy_prompt"], prefix.substr(0, prefix.find("{}")) + c["record"]["prompt"].get<std::string>()) << what;
    }
    const double ppl = r["perplexity_after"]["mean"].get<double>(), golden_ppl = c["ppl_after"].get<double>();
    const double den = r["denominator"].get<double>(), golden_den = c["denominator"].get<double>();
    worst_ppl = std::max(worst_ppl, std::abs(ppl - golden_ppl) / golden_ppl);
    worst_denominator = std::max(worst_denominator, std::abs(den - golden_den) / std::abs(golden_den));
    EXPECT_LE(std::abs(ppl - golden_ppl) / golden_ppl, 1e-2) << what << ": ppl_after " << ppl << " vs " << golden_ppl;
    EXPECT_LE(std::abs(den - golden_den) / std::abs(golden_den), 1e-2) << what << ": denominator " << den << " vs " << golden_den;
    EXPECT_NEAR(r["update_norm"].get<double>(), c["update_norm"].get<double>(), 1e-2 * c["update_norm"].get<double>()) << what;
  }
  std::cout << "stories260K: 48 cases, accuracies exact; worst relative difference ppl_after " << worst_ppl
            << ", denominator " << worst_denominator << "\n";
}

}  // namespace
}  // namespace rc
