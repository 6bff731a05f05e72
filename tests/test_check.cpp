// `check`: denominators against the golden reference, thresholds and exit codes, request files,
// and batched key extraction equal to one request at a time.
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/analysis/check.h"
#include "rome_collapse/io/request_file.h"
#include "rome_collapse/rome/keys.h"
#include "rome_collapse/util/error.h"
#include "support/golden.h"
#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace rc {
namespace {

using test::run_cli;
using test::scratch_dir;


// The golden GPT-2 setting (tiny-gpt2, GPT-2 tokenizer, no BOS, layer 1, fixed templates) with
// the given requests, as a config file.
std::filesystem::path golden_config(const std::filesystem::path& dir, const nlohmann::json& requests) {
  const auto& gpt2 = test::golden_reference()["gpt2"];
  nlohmann::json config = {{"model", test::reference_model_dir("gpt2")},
                           {"tokenizer", test::shared_path("tokenizers/gpt2").string()},
                           {"add_bos", false},
                           {"hparams", {{"layer", 1}, {"v_loss_layer", 3}}},
                           {"context_templates", gpt2["context_templates"]},
                           {"requests", requests}};
  auto path = dir / "golden.json";
  write_file_atomic(path, config.dump(1));
  return path;
}

nlohmann::json golden_requests(bool subject_first_only, bool subject_later_only) {
  nlohmann::json requests = nlohmann::json::array();
  for (const auto& c : test::golden_reference()["gpt2"]["cases"]) {
    if (c["mode"] != "rome") continue;
    const bool first = c["subject_first"].get<bool>();
    if ((subject_first_only && !first) || (subject_later_only && first)) continue;
    requests.push_back(c["request"]);
  }
  return requests;
}

// A config on the embedded model, so these tests run without ../shared.
std::filesystem::path builtin_config(const std::filesystem::path& dir) {
  nlohmann::json config = {
      {"model", "builtin:demo-gpt2"},
      {"hparams", {{"layer", 1}}},
      {"context_templates", {"{}", "The company. {}", "You know. {}", "Because of this. {}", "I think. {}"}},
      {"requests",
       {{{"prompt", "{} is a citizen of"}, {"subject", "Leonardo"}, {"target_new", "Japan"}, {"target_true", "Italy"}},
        {{"prompt", "The official language of {} is"}, {"subject", "Finland"}, {"target_new", "Spanish"}}}}};
  auto path = dir / "builtin.json";
  write_file_atomic(path, config.dump(1));
  return path;
}

TEST(CheckGolden, DenominatorsMatchTheReferenceAndTheSubjectFirstCaseFails) {
  ROME_REQUIRE_SHARED();
  auto dir = scratch_dir("check_golden");
  KeyRunSetup setup = read_key_run_setup(golden_config(dir, golden_requests(false, false)), "");
  LoadedModel loaded = load_model(setup.config.model, setup.config.tokenizer, setup.config.add_bos, "cpu", "float32");
  KeyRunContext context = prepare_key_run(loaded, setup.config);
  CheckReport report = run_check(loaded, setup.config, setup.requests, context, CheckThresholds{});
  ASSERT_EQ(report.requests.size(), 4u);
  EXPECT_EQ(report.forward_passes, 1) << "the 4 x 21 template rows fit one forward pass";
  int compared = 0;
  for (const auto& c : test::golden_reference()["gpt2"]["cases"]) {
    for (const RequestCheck& r : report.requests) {
      if (r.request.prompt != c["request"]["prompt"] || r.request.subject != c["request"]["subject"]) continue;
      const double actual = c["mode"] == "rome" ? r.rome_denominator : r.c_rome_denominator;
      EXPECT_TRUE(test::scalar_close_rel(actual, c["denominator"].get<double>(), 1e-4,
                                         c["request"]["subject"].get<std::string>() + " " + c["mode"].get<std::string>()));
      EXPECT_EQ(r.subject_first, c["subject_first"].get<bool>());
      ++compared;
    }
  }
  EXPECT_EQ(compared, 8);
  // Leonardo (subject first): ROME -0.094 against C-ROME 1.097 fails; the others pass.
  for (const RequestCheck& r : report.requests) {
    if (r.request.subject == "Leonardo") {
      EXPECT_FALSE(r.passed);
      EXPECT_NEAR(r.ratio, 0.0937 / 1.0974, 1e-3);
    } else if (!r.subject_first) {
      EXPECT_TRUE(r.passed) << r.request.subject;
    }
  }
}

TEST(CheckGolden, CliExitCodesOnTheReferenceCases) {
  ROME_REQUIRE_SHARED();
  auto dir = scratch_dir("check_golden_cli");
  auto first = golden_config(dir, golden_requests(true, false));
  auto report = dir / "first.json";
  auto result = run_cli("check --config " + first.string() + " --json " + report.string());
  EXPECT_EQ(result.exit_code, 1) << result.out << result.err;
  EXPECT_NE(result.out.find("FAIL"), std::string::npos) << result.out;
  std::ifstream in(report);
  nlohmann::json json = nlohmann::json::parse(in);
  EXPECT_FALSE(json["passed"].get<bool>());
  EXPECT_EQ(json["requests"][0]["request"]["subject"], "Leonardo");
  EXPECT_TRUE(test::scalar_close_rel(json["requests"][0]["rome_denominator"].get<double>(), -0.09369724988937378, 1e-4,
                                     "rome denominator in the JSON"));
  EXPECT_FALSE(json["requests"][0]["passed"].get<bool>());

  // The subject-later requests, as a request file: all pass.
  auto requests = dir / "later.json";
  write_file_atomic(requests, golden_requests(false, true).dump());
  result = run_cli("check --config " + first.string() + " --requests " + requests.string());
  EXPECT_EQ(result.exit_code, 0) << result.out << result.err;
}

TEST(CheckCli, ThresholdsDecideTheExitCode) {
  auto dir = scratch_dir("check_thresholds");
  const std::string config = builtin_config(dir).string();
  auto report = dir / "report.json";
  // Off: everything passes.
  auto result = run_cli("check --config " + config + " --min-ratio 0 --json " + report.string());
  EXPECT_EQ(result.exit_code, 0) << result.out << result.err;
  std::ifstream in(report);
  nlohmann::json json = nlohmann::json::parse(in);
  ASSERT_EQ(json["requests"].size(), 2u);
  for (const auto& r : json["requests"]) {
    EXPECT_TRUE(r["passed"].get<bool>());
    EXPECT_TRUE(r["rome_denominator"].is_number());
    EXPECT_TRUE(r["c_rome_denominator"].is_number());
  }
  const double smallest = std::min(std::abs(json["requests"][0]["rome_denominator"].get<double>()),
                                   std::abs(json["requests"][1]["rome_denominator"].get<double>()));
  // An absolute threshold just above the smallest |ROME denominator| fails exactly one request.
  result = run_cli("check --config " + config + " --min-ratio 0 --min-abs-denominator " +
                   std::to_string(smallest * 1.01) + " --json " + report.string());
  EXPECT_EQ(result.exit_code, 1) << result.out << result.err;
  std::ifstream in2(report);
  json = nlohmann::json::parse(in2);
  EXPECT_EQ(json["summary"]["failed"].get<int>(), 1);
  // An impossible ratio fails everything.
  result = run_cli("check --config " + config + " --min-ratio 1000");
  EXPECT_EQ(result.exit_code, 1) << result.out << result.err;
}

TEST(CheckCli, UsageAndInputErrorsExitTwo) {
  auto dir = scratch_dir("check_errors");
  const std::string config = builtin_config(dir).string();
  EXPECT_EQ(run_cli("check --config " + config + " --no-such-flag").exit_code, 2);
  EXPECT_EQ(run_cli("check").exit_code, 2) << "--config is required";
  EXPECT_EQ(run_cli("check --config " + config + " --min-ratio -1").exit_code, 2);
  EXPECT_EQ(run_cli("check --config " + config + " --min-ratio abc").exit_code, 2);
  EXPECT_EQ(run_cli("check --config " + (dir / "missing.json").string()).exit_code, 2);
  auto malformed = dir / "malformed.json";
  write_file_atomic(malformed, "[{\"prompt\": \"{} is\", \"subject\": ");
  auto result = run_cli("check --config " + config + " --requests " + malformed.string());
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("malformed.json"), std::string::npos) << result.err;
  auto unknown = dir / "unknown.json";
  write_file_atomic(unknown, R"([{"prompt": "{} is", "subject": "Leonardo", "target_new": "x", "taget_true": "y"}])");
  result = run_cli("check --config " + config + " --requests " + unknown.string());
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("taget_true"), std::string::npos) << result.err;
  auto no_subject = dir / "no_subject.json";
  write_file_atomic(no_subject, R"([{"prompt": "Rome is a city", "subject": "Leonardo", "target_new": "x"}])");
  EXPECT_EQ(run_cli("check --config " + config + " --requests " + no_subject.string()).exit_code, 2);
  auto bad_layer = dir / "bad_layer.json";
  write_file_atomic(bad_layer, R"({"model": "builtin:demo-gpt2", "hparams": {"layer": 9}, "context_templates": ["{}"],
                           "request": {"prompt": "{} is", "subject": "Leonardo", "target_new": "Japan"}})");
  result = run_cli("check --config " + bad_layer.string());
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("hparams.layer"), std::string::npos) << result.err;
}

// A request file with one record that cannot be edited: check skips it with a message naming the
// file and the record, completes, and counts it in its JSON; a file with nothing usable is an error.
TEST(CheckCli, SkipsABadRecordAndReportsIt) {
  auto dir = scratch_dir("check_skip");
  const std::string config = builtin_config(dir).string();
  auto requests = dir / "one-bad.json";
  write_file_atomic(requests, R"([{"prompt": "{} is a citizen of", "subject": "Leonardo", "target_new": "Japan"},
                           {"prompt": "{} was born in", "subject": "Danielle", "target_new": ""},
                           {"prompt": "The mother tongue of {} is", "subject": "Danielle", "target_new": "English"}])");
  const auto report = dir / "report.json";
  auto result = run_cli("check --config " + config + " --requests " + requests.string() + " --json " + report.string());
  ASSERT_TRUE(result.exit_code == 0 || result.exit_code == 1) << result.err;
  EXPECT_NE(result.err.find("one-bad.json: record 1"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("skipped 1 of 3 records"), std::string::npos) << result.err;
  const auto json = nlohmann::json::parse(test::read_if_exists(report));
  EXPECT_EQ(json["summary"]["requests"], 2);
  EXPECT_EQ(json["summary"]["skipped"], 1);
  ASSERT_EQ(json["skipped_records"].size(), 1u);
  EXPECT_NE(json["skipped_records"][0].get<std::string>().find("empty target"), std::string::npos);

  auto none = dir / "none-usable.json";
  write_file_atomic(none, R"([{"prompt": "Rome is", "subject": "Leonardo", "target_new": "x"}])");
  result = run_cli("check --config " + config + " --requests " + none.string());
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("no usable request"), std::string::npos) << result.err;
}

// The ZsRE 1k file's record 534 has an empty "alt": read as part of a dataset it is skipped, not fatal.
TEST(RequestFile, SkipsTheUnusableZsreRecord) {
  ROME_REQUIRE_SHARED();
  std::ifstream in(test::shared_path("data/zsre/zsre_mend_train-1k.json"));
  nlohmann::json records = nlohmann::json::parse(in);
  ASSERT_GT(records.size(), 536u);
  auto excerpt = test::scratch_dir("check_skip_zsre") / "zsre-530.json";
  write_file_atomic(excerpt, nlohmann::json(std::vector<nlohmann::json>(records.begin() + 530, records.begin() + 537)).dump());
  const RequestSet set = read_request_file(excerpt);
  EXPECT_EQ(set.requests.size(), 6u);
  ASSERT_EQ(set.skipped.size(), 1u);
  EXPECT_NE(set.skipped[0].find("zsre-530.json: record 4"), std::string::npos) << set.skipped[0];
}

TEST(RequestFile, ReadsPlainListsJsonLinesAndDatasets) {
  auto dir = scratch_dir("check_request_files");
  auto plain = dir / "plain.json";
  write_file_atomic(plain, R"([{"prompt": "{} is a citizen of", "subject": "Leonardo", "target_new": {"str": "Japan"}},
                        {"prompt": "Danielle speaks", "subject": "Danielle", "target_new": "English", "case_id": 7}])");
  RequestSet set = read_request_file(plain);
  ASSERT_EQ(set.requests.size(), 2u);
  EXPECT_EQ(set.format, DatasetFormat::Requests);
  EXPECT_EQ(set.requests[0].target_new, "Japan");
  EXPECT_EQ(set.requests[1].prompt, "{} speaks");
  EXPECT_EQ(set.ids[1], 7);
  auto lines = dir / "lines.jsonl";
  write_file_atomic(lines, "{\"prompt\": \"{} is\", \"subject\": \"A\", \"target_new\": \"B\"}\n\n"
                    "{\"prompt\": \"{} was\", \"subject\": \"C\", \"target_new\": \"D\"}\n");
  EXPECT_EQ(read_request_file(lines).requests.size(), 2u);
  auto empty = dir / "empty.json";
  write_file_atomic(empty, "[]");
  EXPECT_THROW(read_request_file(empty), InputError);
  EXPECT_THROW(read_request_file(dir / "absent.json"), InputError);
}

TEST(RequestFile, ReadsTheSharedDatasets) {
  ROME_REQUIRE_SHARED();
  RequestSet counterfact = read_request_file(test::shared_path("data/counterfact/counterfact_rome_most_orthogonal_10.json"));
  EXPECT_EQ(counterfact.format, DatasetFormat::CounterfactRome);
  ASSERT_EQ(counterfact.requests.size(), 10u);
  EXPECT_EQ(counterfact.requests[0].prompt, "{}, a citizen of");
  EXPECT_EQ(counterfact.requests[0].subject, "Ferdinand de Saussure");
  EXPECT_EQ(counterfact.requests[0].target_new, "Belgium");
  EXPECT_EQ(counterfact.ids[0], 4088);
  RequestSet easyedit = read_request_file(test::shared_path("data/counterfact/counterfact-edit-1k.easyedit.json"));
  EXPECT_EQ(easyedit.format, DatasetFormat::EasyEdit);
  EXPECT_EQ(easyedit.requests[0].prompt, "{} professionally plays the sport");
  // The first records of the ZsRE file (the whole file holds a record with an empty "alt").
  std::ifstream in(test::shared_path("data/zsre/zsre_mend_train-1k.json"));
  nlohmann::json records = nlohmann::json::parse(in);
  auto excerpt = test::scratch_dir("check_request_zsre") / "zsre.json";
  write_file_atomic(excerpt, nlohmann::json(std::vector<nlohmann::json>(records.begin(), records.begin() + 3)).dump());
  RequestSet zsre = read_request_file(excerpt);
  EXPECT_EQ(zsre.format, DatasetFormat::ZsreRome);
  EXPECT_EQ(zsre.requests[0].prompt, "What is the product made by {}?");
  EXPECT_EQ(zsre.requests[0].target_new, "unmanned aircraft");
}

// One enum names every layout a request file or dataset is read in; a dataset config takes the
// dataset names (not "requests"), and a config's own record reports the layout it was read as.
TEST(RequestFile, OneEnumNamesEveryLayout) {
  for (DatasetFormat format : {DatasetFormat::CounterfactRome, DatasetFormat::EasyEdit, DatasetFormat::ZsreRome})
    EXPECT_EQ(parse_dataset_format(to_string(format), "cfg"), format);
  EXPECT_EQ(to_string(DatasetFormat::Requests), "requests");
  EXPECT_THROW(parse_dataset_format("requests", "cfg: dataset.format"), InputError);
  const nlohmann::json zsre = {{"subject", "Danielle"}, {"src", "What does Danielle speak?"}, {"alt", "English"}};
  DatasetFormat format = DatasetFormat::Auto;
  EXPECT_EQ(parse_request_record(zsre, "cfg: request", &format).prompt, "What does {} speak?");
  EXPECT_EQ(format, DatasetFormat::ZsreRome);
  const nlohmann::json plain = {{"prompt", "{} speaks"}, {"subject", "Danielle"}, {"target_new", "English"}};
  EXPECT_EQ(parse_request_record(plain, "cfg: request", &format).subject, "Danielle");
  EXPECT_EQ(format, DatasetFormat::Requests);
  // The same reader, through a dataset: one record, one request.
  EXPECT_EQ(parse_edit_record(zsre, "cfg", DatasetFormat::Auto).request.prompt, "What does {} speak?");
  EXPECT_NE(parse_edit_record({{"subject", "X"}, {"src", "Y?"}, {"alt", ""}}, "cfg", DatasetFormat::ZsreRome).invalid, "");
}

TEST(BatchedKeys, EqualOneRequestAtATime) {
  LoadedModel loaded = load_model("builtin:demo-gpt2", "", std::nullopt, "cpu", "float32");
  const std::vector<std::string> templates = {"{}", "The company. {}", "Because of the weather, the game was. {}"};
  std::vector<EditRequest> requests = {
      normalize_request({"{} is a citizen of", "Leonardo", "Japan", ""}, "r0"),
      normalize_request({"The mother tongue of {} is", "Danielle Darrieux", "English", ""}, "r1"),
      normalize_request({"{}, that was developed by", "Windows Phone", "Google", ""}, "r2")};
  int64_t passes = 0;
  // A budget of 40 tokens forces several forward passes with different padding.
  auto batched = compute_keys_batched(*loaded.model, *loaded.tokenizer, loaded.add_bos, requests, templates, 1,
                                      loaded.pad_id(), 0, 40, &passes);
  EXPECT_GT(passes, 1);
  ASSERT_EQ(batched.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    KeySet single = compute_keys(*loaded.model, *loaded.tokenizer, loaded.add_bos, requests[i], templates, 1, loaded.pad_id());
    EXPECT_TRUE(test::all_close_rel(batched[i].prefixed_keys, single.prefixed_keys, 1e-5, "prefixed keys " + std::to_string(i)));
    EXPECT_TRUE(test::all_close_rel(batched[i].prefixed_outputs, single.prefixed_outputs, 1e-5, "outputs " + std::to_string(i)));
  }
}

TEST(CheckThresholdsUnit, RatioAndAbsoluteBounds) {
  RequestCheck check;
  check.rome_denominator = -0.09;
  check.c_rome_denominator = 1.1;
  check.ratio = 0.09 / 1.1;
  apply_thresholds(check, CheckThresholds{0.0, 0.5});
  EXPECT_FALSE(check.passed);
  EXPECT_EQ(check.failures.size(), 1u);
  apply_thresholds(check, CheckThresholds{0.0, 0.05});
  EXPECT_TRUE(check.passed);
  apply_thresholds(check, CheckThresholds{0.1, 0.05});
  EXPECT_FALSE(check.passed);
  check.ratio = std::nan("");
  apply_thresholds(check, CheckThresholds{0.0, 0.0});
  EXPECT_FALSE(check.passed) << "0/0 denominators are no update at all";
}

}  // namespace
}  // namespace rc
