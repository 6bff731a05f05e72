// What researchers bring in: EasyEdit's ROME YAML and ROME's hparams JSON (the same edit as the
// native config), one config schema for every command with all unknown fields in one message,
// `edit` from flags (inline request, --dataset --case-id), models by Hugging Face name in a hub
// cache, the versioned result envelope, subjects that end inside a word, and --help.
#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "rome_collapse/experiment/config_schema.h"
#include "rome_collapse/experiment/edit_config.h"
#include "rome_collapse/model/hub_cache.h"
#include "rome_collapse/rome/edit.h"
#include "rome_collapse/rome/hparams_import.h"
#include "rome_collapse/rome/keys.h"
#include "rome_collapse/rome/subject_boundary.h"
#include "rome_collapse/text/tokenizer.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/fields.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/structured_file.h"
#include "support/golden.h"

namespace rc {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string shell_quoted(const fs::path& path) { return "'" + path.string() + "'"; }
fs::path fixture(const std::string& name) { return fs::path(ROME_SOURCE_DIR) / "tests/data" / name; }

// The golden subject-first GPT-2 request on the reference model, without hparams.
json base_config() {
  const auto& golden = test::golden_reference()["gpt2"];
  return {{"model", test::reference_model_dir("gpt2")},
          {"tokenizer", test::shared_path("tokenizers/gpt2").string()},
          {"add_bos", false},
          {"request", golden["cases"][0]["request"]},
          {"record_timings", false},
          {"context_templates", golden["context_templates"]}};
}

fs::path write_json(const fs::path& path, const json& value) {
  write_file_atomic(path, value.dump(2));
  return path;
}

json edit_result(const std::string& args) {
  const auto run = test::run_cli("edit " + args);
  EXPECT_EQ(run.exit_code, 0) << args << "\n" << run.err;
  if (run.exit_code != 0) return json();
  const json document = json::parse(run.out);
  EXPECT_EQ(document["schema_version"], kResultSchemaVersion);
  EXPECT_EQ(document["results"].size(), 1u);
  return document["results"][0];
}

// The numbers an edit is made of (no timings, paths or provenance).
json edit_numbers(const json& result) {
  json out;
  for (const char* key : {"method", "layer", "subject_last_index", "denominator", "numerator_norm", "update_norm",
                          "optimisation", "efficacy", "logprob_target_new_after"})
    out[key] = result.at(key);
  return out;
}

TEST(Yaml, PlainScalarsAreTypedAndQuotedOnesStayStrings) {
  const json value = parse_yaml("a: 5e-1\nb: [[5, 10], [10, 10]]\nc: \"ROME\"\nd: '17'\ne: true\nf: ~\ng: -3\n", "x.yaml");
  EXPECT_EQ(value["a"], 0.5);
  EXPECT_EQ(value["b"], json::parse("[[5, 10], [10, 10]]"));
  EXPECT_EQ(value["c"], "ROME");
  EXPECT_EQ(value["d"], "17");
  EXPECT_EQ(value["e"], true);
  EXPECT_TRUE(value["f"].is_null());
  EXPECT_EQ(value["g"], -3);
  test::expect_input_error([] { parse_yaml("a: [1, 2\n", "bad.yaml"); }, {"bad.yaml", "malformed YAML", "line"});
  test::expect_input_error([] { parse_yaml("a: .inf\n", "inf.yaml"); }, {"inf.yaml", "not a finite number"});
  test::expect_input_error([] { parse_yaml("a: 1\na: 2\n", "dup.yaml"); }, {"dup.yaml", "duplicate key \"a\""});
}

TEST(ConfigSchema, AllUnknownFieldsInOneMessageWithTheClosestName) {
  EXPECT_EQ(closest_name("layr", {"layer", "layers", "v_lr"}), "layer");
  EXPECT_EQ(closest_name("zzzzzz", {"layer"}), "");
  test::expect_input_error(
      [] { parse_edit_config(json{{"modle", "m"}, {"hparam", json::object()}, {"requestz", 1}}, "c.json", "."); },
      {"c.json: unknown fields: ", "\"modle\" (did you mean \"model\"?)", "\"hparam\" (did you mean \"hparams\"?)",
       "\"requestz\" (did you mean \"request\"?)"});
  RomeHparams hparams;
  test::expect_input_error([&] { read_fields(hparams, json{{"v_lrr", 1}, {"kl_factr", 1}}, "h"); },
                           {"h: unknown fields: \"kl_factr\" (did you mean \"kl_factor\"?), \"v_lrr\" (did you mean \"v_lr\"?)"});
}

TEST(ConfigSchema, EveryFieldAnHparamsFileCannotHonourIsListedOnce) {
  const json hparams = {{"layers", {5, 6}}, {"fact_token", "subject_first"}, {"alg_name", "MEMIT"},
                        {"fp16", true},     {"v_lr", 0.1},                   {"mom2_n_sample", 10}};
  test::expect_input_error([&] { parse_hparams(hparams, "c.json: hparams", "."); },
                           {"unknown field \"mom2_n_sample\" (did you mean \"mom2_n_samples\"?)",
                            "fields this tool cannot honour", "layers: [5,6] names 2 layers",
                            "fact_token: \"subject_first\"", "alg_name: \"MEMIT\"", "fp16: true"});
  // An hparams file passed as the config says how to pass it.
  test::expect_input_error([] { read_edit_config(fixture("easyedit-rome-tiny-gpt2.yaml")); },
                           {"unknown fields", "looks like a ROME / EasyEdit hparams file", "--hparams"});
}

TEST(ConfigSchema, Mom2AdjustmentWithoutStatisticsSaysWhatToProvide) {
  const json hparams = {{"layers", {1}}, {"mom2_adjustment", true}, {"mom2_dataset", "wikipedia"},
                        {"mom2_n_samples", 1000}, {"rewrite_module_tmp", "transformer.h.{}.mlp.c_proj"}};
  json config = {{"model", "builtin:demo-gpt2"}, {"hparams", hparams}};
  test::expect_input_error([&] { parse_edit_config(config, "c.json", "."); },
                           {"mom2_adjustment is true", "transformer.h.1.mlp.c_proj_float32_mom2_1000.npz",
                            "rome-collapse stats", "--storage-dtype float32", "\"stats\""});
}

TEST(HparamsImport, EasyEditYamlAndRomeJsonGiveTheNativeEdit) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("config-inputs-equivalence");
  json native = base_config();
  native["hparams"] = {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 5}};
  const json expected = edit_numbers(edit_result("--config " + shell_quoted(write_json(dir / "native.json", native))));
  ASSERT_FALSE(expected.is_null());
  EXPECT_EQ(expected["optimisation"]["iterations"], 5);

  // EasyEdit's YAML through --hparams, over a config without hparams.
  const json yaml_result = edit_result("--config " + shell_quoted(write_json(dir / "no-hparams.json", base_config())) +
                                       " --hparams " + shell_quoted(fixture("easyedit-rome-tiny-gpt2.yaml")));
  EXPECT_EQ(edit_numbers(yaml_result), expected);
  const json& source = yaml_result["provenance"]["hparams_source"];
  EXPECT_EQ(source["format"], "easyedit");
  for (const char* unused : {"device", "model_name", "context_template_length_params"})
    EXPECT_TRUE(source["unused"].contains(unused)) << source.dump();

  // ROME's hparams JSON named by the config, as it is.
  json rome = base_config();
  rome["hparams"] = fixture("rome-hparams-tiny-gpt2.json").string();
  const json rome_result = edit_result("--config " + shell_quoted(write_json(dir / "rome.json", rome)));
  EXPECT_EQ(edit_numbers(rome_result), expected);
  EXPECT_EQ(rome_result["provenance"]["hparams_source"]["format"], "rome");
}

TEST(HparamsImport, ModuleNamesMustNameTheRewrittenModule) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("config-inputs-modules");
  json config = base_config();
  config["hparams"] = {{"layers", {1}}, {"v_loss_layer", 3}, {"v_num_grad_steps", 2},
                       {"rewrite_module_tmp", "model.layers.{}.mlp.down_proj"}, {"ln_f_module", "transformer.ln_f"},
                       {"attn_module_tmp", "transformer.h.{}.self_attn"}};
  const auto run = test::run_cli("edit --config " + shell_quoted(write_json(dir / "c.json", config)));
  EXPECT_EQ(run.exit_code, 2) << run.err;
  for (const char* part : {"module names do not match this GPT-2 model", "rewrite_module_tmp",
                           "\"transformer.h.1.mlp.c_proj\", the module this tool rewrites", "attn_module_tmp"})
    EXPECT_NE(run.err.find(part), std::string::npos) << part << " in: " << run.err;
  EXPECT_EQ(run.err.find("ln_f_module"), std::string::npos) << run.err;  // that one is right
}

TEST(EditFlags, InlineRequestAndDatasetCaseGiveTheConfigsEdit) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("config-inputs-flags");
  json config = base_config();
  config["hparams"] = {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 3}};
  const json expected = edit_numbers(edit_result("--config " + shell_quoted(write_json(dir / "full.json", config))));
  // Model, tokenizer, layer, method and request as flags; the config keeps templates and steps.
  json rest = {{"context_templates", config["context_templates"]}, {"record_timings", false},
               {"hparams", {{"v_num_grad_steps", 3}}}};  // v_loss_layer: the model's last layer (3)
  const std::string model_flags = " --model " + shell_quoted(test::reference_model_dir("gpt2")) + " --tokenizer " +
                                  shell_quoted(test::shared_path("tokenizers/gpt2")) + " --no-bos --layer 1 --method rome";
  const json& request = config["request"];
  const json inline_result =
      edit_result("--config " + shell_quoted(write_json(dir / "rest.json", rest)) + model_flags + " --prompt " +
                  shell_quoted(request["prompt"].get<std::string>()) + " --subject " + request["subject"].get<std::string>() +
                  " --target-new " + request["target_new"].get<std::string>() + " --target-true " +
                  request["target_true"].get<std::string>());
  EXPECT_EQ(edit_numbers(inline_result), expected);

  // The same request as record 7 of a CounterFact file.
  const json records = json::array(
      {{{"case_id", 3}, {"requested_rewrite", {{"prompt", "{} plays"}, {"subject", "Lionel Messi"},
                                               {"target_new", {{"str", "tennis"}}}, {"target_true", {{"str", "soccer"}}}}}},
       {{"case_id", 7}, {"requested_rewrite", {{"prompt", request["prompt"]}, {"subject", request["subject"]},
                                               {"target_new", {{"str", request["target_new"]}}},
                                               {"target_true", {{"str", request["target_true"]}}}}}}});
  const json case_result = edit_result("--config " + shell_quoted(dir / "rest.json") + model_flags + " --dataset " +
                                       shell_quoted(write_json(dir / "counterfact.json", records)) + " --case-id 7");
  EXPECT_EQ(edit_numbers(case_result), expected);

  const auto missing = test::run_cli("edit --config " + shell_quoted(dir / "rest.json") + model_flags + " --dataset " +
                                     shell_quoted(dir / "counterfact.json") + " --case-id 99");
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("no record with case id 99"), std::string::npos) << missing.err;
  const auto two_methods = test::run_cli("edit --config " + shell_quoted(dir / "full.json") + " --method rome,c-rome");
  ASSERT_EQ(two_methods.exit_code, 0) << two_methods.err;
  const json both = json::parse(two_methods.out)["results"];
  ASSERT_EQ(both.size(), 2u);
  EXPECT_EQ(both[1]["method"], "c-rome");
}

TEST(ConfigSchema, CheckAndKeysAcceptABatchConfig) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("config-inputs-batch-config");
  json config = base_config();
  config.erase("request");
  config["hparams"] = {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 2}};
  config["methods"] = {"rome", "c-rome"};
  config["dataset"] = {{"path", write_json(dir / "requests.json", json::array({base_config()["request"]})).string()},
                       {"format", "auto"}};
  config["cases"] = nullptr;
  config["evaluation"] = {{"max_length", 20}};
  config["sequential"] = false;
  const fs::path path = write_json(dir / "batch.json", config);
  const auto check = test::run_cli("check --config " + shell_quoted(path));
  EXPECT_TRUE(check.exit_code == 0 || check.exit_code == 1) << check.err;
  const auto keys = test::run_cli("keys --config " + shell_quoted(path) + " --out " + shell_quoted(dir / "keys.npz"));
  EXPECT_EQ(keys.exit_code, 0) << keys.err;
  config["evaluatoin"] = 1;  // still refused when unknown
  const auto bad = test::run_cli("check --config " + shell_quoted(write_json(dir / "bad.json", config)));
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("\"evaluatoin\" (did you mean \"evaluation\"?)"), std::string::npos) << bad.err;
}

// A hub cache in a temporary directory: models--org--name/{refs/main, snapshots/<hash>/}.
fs::path make_hub_cache(const std::string& name) {
  const fs::path hub = test::scratch_dir(name);
  const fs::path repo = hub / "models--openai-community--gpt2";
  fs::create_directories(repo / "refs");
  fs::create_directories(repo / "snapshots" / "0123abcd");
  fs::create_directories(repo / "snapshots" / "old4567");
  write_file_atomic(repo / "refs" / "main", "0123abcd\n");
  for (const char* file : {"config.json", "model.safetensors"})
    fs::create_symlink(fs::path(test::reference_model_dir("gpt2")) / file, repo / "snapshots" / "0123abcd" / file);
  for (const char* file : {"vocab.json", "merges.txt"})
    fs::create_symlink(test::shared_path("tokenizers/gpt2") / file, repo / "snapshots" / "0123abcd" / file);
  return hub;
}

TEST(HubCache, NamesAndRepoFoldersResolveOffline) {
  ROME_REQUIRE_SHARED();
  const fs::path hub = make_hub_cache("config-inputs-hub");
  const fs::path snapshot = hub / "models--openai-community--gpt2" / "snapshots" / "0123abcd";
  setenv("HF_HUB_CACHE", hub.c_str(), 1);
  EXPECT_EQ(resolve_model_location("openai-community/gpt2"), snapshot.string());
  EXPECT_EQ(resolve_model_location("gpt2"), snapshot.string());  // a bare name under any org
  EXPECT_EQ(resolve_model_location((hub / "models--openai-community--gpt2").string() + "/"), snapshot.string());
  EXPECT_EQ(resolve_model_location(snapshot.string()), snapshot.string());
  test::expect_input_error([] { resolve_model_location("someone/missing-model"); },
                           {"\"someone/missing-model\" not found", "models--someone/missing-model", "Hugging Face hub cache",
                            "HF_HUB_CACHE"});
  unsetenv("HF_HUB_CACHE");
  setenv("HF_HOME", hub.parent_path().c_str(), 1);  // HF_HOME/hub: not this layout, so nothing is found
  test::expect_input_error([] { resolve_model_location("gpt2"); }, {(fs::path(hub.parent_path()) / "hub").string()});
  unsetenv("HF_HOME");

  // The CLI: --model by name, everything else from flags and a small config.
  setenv("HF_HUB_CACHE", hub.c_str(), 1);
  const fs::path dir = test::scratch_dir("config-inputs-hub-cli");
  json rest = {{"context_templates", base_config()["context_templates"]}, {"hparams", {{"v_num_grad_steps", 2}}}};
  write_json(dir / "rest.json", rest);
  const json result = edit_result("--config " + shell_quoted(dir / "rest.json") +
                                  " --model openai-community/gpt2 --layer 1 --prompt '{} is a citizen of' "
                                  "--subject Leonardo --target-new Japan");
  unsetenv("HF_HUB_CACHE");
  ASSERT_FALSE(result.is_null());
  EXPECT_EQ(result["provenance"]["model"], snapshot.string());
  EXPECT_EQ(result["provenance"]["hparams"]["v_loss_layer"], 3);  // the model's last layer
}

TEST(SubjectBoundary, ASubjectEndingInsideAWordIsRefusedWithItsTokens) {
  ROME_REQUIRE_SHARED();
  const auto run = test::run_cli("edit --model " + shell_quoted(test::reference_model_dir("gpt2")) + " --tokenizer " +
                                 shell_quoted(test::shared_path("tokenizers/gpt2")) +
                                 " --layer 1 --prompt 'Leonardo is a citizen of' --subject Leonard --target-new Japan");
  EXPECT_EQ(run.exit_code, 2) << run.err;
  for (const char* part : {"subject \"Leonard\" does not end on a token boundary", "\"Leonardo is a citizen of\"",
                           "the prompt's tokens are [", "whole word"})
    EXPECT_NE(run.err.find(part), std::string::npos) << part << " in: " << run.err;
}

TEST(SubjectBoundary, InsideAWordIsRefusedAndMergedPunctuationWarned) {
  ROME_REQUIRE_SHARED();
  const auto tokenizer = load_tokenizer(test::shared_path("tokenizers/gpt2"));
  EXPECT_EQ(subject_boundary(*tokenizer, false, "{} is a citizen of", "Leonardo", "r").kind, SubjectBoundary::Exact);
  EXPECT_EQ(subject_boundary(*tokenizer, false, "{}o is a citizen of", "Leonard", "r").kind, SubjectBoundary::InsideWord);
  // CounterFact case 3854: "F.C." + "," tokenises as "." ".," -- the key sits on ".," as in ROME.
  const SubjectBoundaryCheck merged =
      subject_boundary(*tokenizer, false, "{}, whose headquarters are in", "Partick Thistle F.C.", "cf: request 3854");
  EXPECT_EQ(merged.kind, SubjectBoundary::MergedWithPunctuation);
  EXPECT_NE(merged.message.find("\".,\""), std::string::npos) << merged.message;
  const std::vector<EditRequest> requests = {{"{}, whose headquarters are in", "Partick Thistle F.C.", "Paris", ""},
                                             {"{} is a citizen of", "Leonardo", "Japan", ""}};
  EXPECT_EQ(subject_boundary_warnings(*tokenizer, false, requests, {}, "cf").size(), 1u);
}

TEST(Help, ListsEveryConfigFieldWithItsDefaultAndTheExitCodes) {
  const auto run = test::run_cli("edit --help");
  EXPECT_EQ(run.exit_code, 0);
  for (const std::string& name : field_names(ConfigFile{})) EXPECT_NE(run.out.find("  " + name), std::string::npos) << name;
  for (const char* part : {"v_num_grad_steps (default 20)", "collapse_ratio (default 10.0)", "layers ([L])",
                           "Exit codes: 0 success", "--threads", "--case-id", "--hparams"})
    EXPECT_NE(run.out.find(part), std::string::npos) << part;
  const auto stats = test::run_cli("stats --model builtin:demo-gpt2 --layer 0 --corpus x --out y --dtype float64");
  EXPECT_EQ(stats.exit_code, 2);
  EXPECT_NE(stats.err.find("--storage-dtype float64"), std::string::npos) << stats.err;
}

}  // namespace
}  // namespace rc
