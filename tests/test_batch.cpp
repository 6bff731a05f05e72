// `rome-collapse batch` / `merge` on the reference tiny GPT-2 with real CounterFact, zsRE and
// EasyEdit records: every metric present, tables consistent with results.jsonl, weights restored
// exactly between edits, and interrupted (SIGTERM, SIGKILL, cut-off line), resumed and sharded runs
// giving the same tables as one uninterrupted run.
#include <chrono>
#include <csignal>
#include <fstream>
#include <set>
#include <sstream>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "rome_collapse/eval/evaluation.h"
#include "rome_collapse/io/dataset.h"
#include "rome_collapse/rome/templates.h"
#include "rome_collapse/util/error.h"
#include "support/golden.h"
#include "support/test_support.h"

namespace rc {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;


void write_json(const fs::path& path, const json& value) { std::ofstream(path) << value.dump(1) << "\n"; }

std::vector<json> result_lines(const fs::path& dir) {
  std::vector<json> lines;
  std::istringstream in(test::read_if_exists(dir / "results.jsonl"));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) lines.push_back(json::parse(line));
  return lines;
}

const std::vector<std::string>& kTemplates = fixed_example_templates();

// A fast tiny-GPT-2 batch config (few optimisation steps, a short perplexity text).
json tiny_config(const fs::path& dir, const std::string& dataset, const json& cases, const std::vector<std::string>& methods) {
  std::ofstream(dir / "ppl.txt") << "Once upon a time, there was a little girl who liked to play in the park.\n"
                                    "The capital of France is Paris, and the river there is the Seine.\n";
  return {{"model", test::shared_path("reference/tiny-gpt2").string()},
          {"tokenizer", test::shared_path("tokenizers/gpt2").string()},
          {"add_bos", false},
          {"methods", methods},
          {"dataset", {{"path", test::shared_path(dataset).string()}, {"format", "auto"}}},
          {"cases", cases},
          {"hparams",
           {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 4}, {"v_lr", 0.5}, {"v_weight_decay", 0.5},
            {"clamp_norm_factor", 4}, {"kl_factor", 0.0625}, {"mom2_adjustment", false}}},
          {"context_templates", kTemplates},
          {"perplexity", {{"texts", (dir / "ppl.txt").string()}}}};
}

std::string shell_quote(const fs::path& path) { return "'" + path.string() + "'"; }

// tables.md's "Run started" line is the one that differs between two runs by design.
std::string without_start_time(const std::string& text) {
  const size_t at = text.find("- Run started: ");
  return at == std::string::npos ? text : text.substr(0, at) + text.substr(text.find('\n', at) + 1);
}

void expect_same_tables(const fs::path& a, const fs::path& b) {
  for (const char* file : {"tables.md", "tables.csv", "summary.json"}) {
    const std::string left = without_start_time(test::read_if_exists(a / file)),
                      right = without_start_time(test::read_if_exists(b / file));
    EXPECT_FALSE(left.empty()) << (a / file);
    EXPECT_EQ(left, right) << file << " differs between " << a << " and " << b;
  }
}

// The edit's numbers, without timings and peak memory (which differ run to run).
json without_timings(json line) {
  line.erase("timings_s");
  line.erase("peak_memory_mib");
  return line;
}

void expect_same_results(const fs::path& a, const fs::path& b) {
  auto left = result_lines(a), right = result_lines(b);
  ASSERT_EQ(left.size(), right.size());
  for (size_t i = 0; i < left.size(); ++i)
    EXPECT_EQ(without_timings(left[i]), without_timings(right[i])) << "line " << i;
}


size_t complete_lines(const fs::path& path) {
  const std::string text = test::read_if_exists(path);
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

// Waits until results.jsonl holds `lines` complete lines (or the process ended); true if it did.
bool wait_for_lines(pid_t pid, const fs::path& results, size_t lines) {
  for (int i = 0; i < 6000; ++i) {
    if (complete_lines(results) >= lines) return true;
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// --- dataset formats --------------------------------------------------------------------------

TEST(BatchDataset, ReadsTheThreeFormats) {
  ROME_REQUIRE_SHARED();
  const Dataset cf = read_dataset(test::shared_path("data/counterfact/counterfact_rome_most_orthogonal_10.json"));
  EXPECT_EQ(cf.format, DatasetFormat::CounterfactRome);
  ASSERT_EQ(cf.records.size(), 10u);
  EXPECT_EQ(cf.records[0].case_id, 4088);
  EXPECT_EQ(cf.records[0].request.prompt, "{}, a citizen of");
  EXPECT_EQ(cf.records[0].request.target_new, "Belgium");
  EXPECT_EQ(cf.records[0].paraphrases.size(), 2u);
  ASSERT_EQ(cf.records[0].neighbourhood.size(), 10u);
  EXPECT_EQ(cf.records[0].neighbourhood[0].answer, "Switzerland");  // neighbours keep target_true

  const Dataset zsre = read_dataset(test::shared_path("data/zsre/zsre_mend_train-1k.json"));
  EXPECT_EQ(zsre.format, DatasetFormat::ZsreRome);
  EXPECT_EQ(zsre.records[0].request.prompt, "What is the product made by {}?");
  EXPECT_EQ(zsre.records[0].request.target_new, "unmanned aircraft");
  EXPECT_EQ(zsre.records[0].request.target_true, "uniform");
  ASSERT_EQ(zsre.records[0].neighbourhood.size(), 1u);
  EXPECT_EQ(zsre.records[0].neighbourhood[0].prompt, "nq question: john goodman's character in the big lebowski");
  EXPECT_EQ(zsre.records[0].neighbourhood[0].answer, "Walter Sobchak");
  // A record with an empty "alt" is kept but marked, naming its field.
  EXPECT_NE(zsre.records[534].invalid.find("record 534: field \"alt\""), std::string::npos) << zsre.records[534].invalid;

  const Dataset easy = read_dataset(test::shared_path("data/counterfact/counterfact-edit-1k.easyedit.json"));
  EXPECT_EQ(easy.format, DatasetFormat::EasyEdit);
  EXPECT_EQ(easy.records[0].request.prompt, "{} professionally plays the sport");
  EXPECT_EQ(easy.records[0].request.target_true, "basketball");
  ASSERT_EQ(easy.records[0].neighbourhood.size(), 1u);
  EXPECT_EQ(easy.records[0].neighbourhood[0].answer, "basketball");

  // The nested EasyEdit locality form of golden_eval_stories260K.json.
  const json nested = json::array({{{"prompt", "Lily loved to play with her"},
                                    {"target_new", "dog"},
                                    {"ground_truth", "toys"},
                                    {"rephrase_prompt", "Every day, Lily played with her"},
                                    {"subject", "Lily"},
                                    {"locality", {{"neighborhood", {{"prompt", "Tom liked to play with his"},
                                                                    {"ground_truth", "ball"}}}}}}});
  const Dataset golden = parse_dataset(nested, "nested.json");
  ASSERT_EQ(golden.records[0].neighbourhood.size(), 1u);
  EXPECT_EQ(golden.records[0].neighbourhood[0].prompt, "Tom liked to play with his");
  EXPECT_EQ(golden.records[0].neighbourhood[0].answer, "ball");
  EXPECT_EQ(golden.records[0].paraphrases, std::vector<std::string>{"Every day, Lily played with her"});
}

TEST(BatchDataset, ErrorsNameFileRecordAndField) {
  auto message = [](const json& data, DatasetFormat format) {
    try {
      parse_dataset(data, "bad.json", format);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const json easy = {{"prompt", "Lily ate"}, {"subject", "Lily"}, {"target_new", "cake"}};
  json missing = easy;
  missing.erase("subject");
  EXPECT_EQ(message(json::array({easy, missing}), DatasetFormat::EasyEdit), "bad.json: record 1: missing field \"subject\"");
  EXPECT_NE(message(json::array({{{"question", "x"}}}), DatasetFormat::Auto).find("bad.json: record 0: cannot tell"),
            std::string::npos);
  EXPECT_EQ(message(json::array({{{"requested_rewrite", {{"prompt", "{} is"}, {"subject", "A"}, {"target_new", 3}}}}}),
                    DatasetFormat::Auto),
            "bad.json: record 0: requested_rewrite: field \"target_new\": expected a string");
  EXPECT_THROW(parse_dataset_format("jsonl", "cfg: dataset.format"), InputError);
}

TEST(BatchDataset, SelectsParagraphsByCodePoints) {
  const std::string text = "short one\n\nfirst long paragraph é here\nsecond line\n\n  \n\nanother long paragraph\n";
  TextSelection selection;
  selection.split = "paragraphs";
  selection.longer_than = 10;
  selection.cut_at = 25;
  selection.first = 5;
  const auto texts = select_texts(text, selection);
  ASSERT_EQ(texts.size(), 2u);
  EXPECT_EQ(texts[0], "first long paragraph é he");  // 25 code points, é is one
  EXPECT_EQ(texts[1], "another long paragraph");
  selection.first = 1;
  EXPECT_EQ(select_texts(text, selection).size(), 1u);
}

// --- end to end -------------------------------------------------------------------------------

void expect_metrics_and_consistent_tables(const fs::path& dir, size_t expected_lines, bool has_paraphrases) {
  const auto lines = result_lines(dir);
  ASSERT_EQ(lines.size(), expected_lines);
  std::set<std::string> keys;
  for (const auto& line : lines) {
    keys.insert(std::to_string(line["position"].get<int64_t>()) + line["method"].get<std::string>());
    for (const char* key : {"efficacy", "efficacy_pre", "locality", "rewrite_prompts_correct", "rewrite_prompts_correct_pre",
                            "neighborhood_prompts_correct", "neighborhood_prompts_correct_pre", "denominator",
                            "update_norm", "numerator_norm", "logprob_target_new_after"})
      EXPECT_TRUE(line[key].is_number()) << key << " in " << line["method"] << " case " << line["case_id"];
    if (has_paraphrases)
      for (const char* key : {"generalisation", "generalisation_pre", "paraphrase_prompts_correct"})
        EXPECT_TRUE(line[key].is_number()) << key;
    EXPECT_TRUE(line["perplexity_after"]["mean"].is_number());
    EXPECT_TRUE(line["collapse"].is_boolean());
    EXPECT_FALSE(line.contains("context_templates"));  // in run.json, once
  }
  EXPECT_EQ(keys.size(), lines.size()) << "a (case, method) pair appears twice";

  // summary.json's "all" rows against the lines themselves.
  const json summary = json::parse(test::read_if_exists(dir / "summary.json"));
  const json run = json::parse(test::read_if_exists(dir / "run.json"));
  EXPECT_EQ(run["context_templates"], json(kTemplates));
  for (const auto& method : run["config"]["methods"]) {
    std::vector<double> efficacy, locality, ppl, update_norm, denominator;
    for (const auto& line : lines) {
      if (line["method"] != method) continue;
      efficacy.push_back(line["efficacy"].get<double>());
      locality.push_back(line["locality"].get<double>());
      ppl.push_back(line["perplexity_after"]["mean"].get<double>());
      update_norm.push_back(line["update_norm"].get<double>());
      denominator.push_back(std::abs(line["denominator"].get<double>()));
    }
    auto mean = [](const std::vector<double>& v) {
      double s = 0;
      for (double x : v) s += x;
      return s / double(v.size());
    };
    const json& all = summary["methods"][method.get<std::string>()]["all"];
    EXPECT_EQ(all["cases"].get<size_t>(), efficacy.size());
    EXPECT_NEAR(all["efficacy"].get<double>(), mean(efficacy), 1e-12);
    EXPECT_NEAR(all["locality"].get<double>(), mean(locality), 1e-12);
    EXPECT_NEAR(all["ppl_mean"].get<double>(), mean(ppl), 1e-9 * mean(ppl));
    EXPECT_EQ(all["update_norm_max"].get<double>(), *std::max_element(update_norm.begin(), update_norm.end()));
    EXPECT_EQ(all["abs_denominator_min"].get<double>(), *std::min_element(denominator.begin(), denominator.end()));
    const json& collapse = summary["methods"][method.get<std::string>()]["collapse"];
    const json& normal = summary["methods"][method.get<std::string>()]["normal"];
    EXPECT_EQ(collapse["cases"].get<size_t>() + normal["cases"].get<size_t>(), efficacy.size());
  }
  const std::string csv = test::read_if_exists(dir / "tables.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 3 * static_cast<long>(run["config"]["methods"].size()));
  const std::string markdown = test::read_if_exists(dir / "tables.md");
  EXPECT_NE(markdown.find("| Efficacy | Generalisation | Locality |"), std::string::npos);
  // Valid Markdown: every table row has as many cells as the header ("|" inside cells escaped).
  std::istringstream rows(markdown);
  int64_t header_cells = -1;
  for (std::string row; std::getline(rows, row);) {
    if (row.empty() || row[0] != '|') continue;
    int64_t cells = -1;  // "| a | b |": pipes minus one
    for (size_t i = 0; i < row.size(); ++i) cells += row[i] == '|' && (i == 0 || row[i - 1] != '\\') ? 1 : 0;
    if (header_cells < 0) header_cells = cells;
    EXPECT_EQ(cells, header_cells) << row;
  }
  EXPECT_EQ(header_cells, 15);
  EXPECT_NE(markdown.find("- Model: `"), std::string::npos) << markdown;
  EXPECT_NE(markdown.find("- Edited layer: 1"), std::string::npos) << markdown;
}

TEST(Batch, CounterFactEveryMetricAndExactRestoration) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("batch-counterfact");
  const std::string dataset = "data/counterfact/counterfact_rome_most_orthogonal_10.json";
  // One request per group: the restoration check below compares an edit made after others with the
  // same edit alone, and v* depends on its group's shapes at the float-rounding level.
  json all = tiny_config(dir, dataset, {{"start", 0}, {"stop", 3}}, {"rome", "c-rome", "c-rome-prefix"});
  all["group_size"] = 1;
  write_json(dir / "all.json", all);
  auto result = test::run_cli("batch --config " + shell_quote(dir / "all.json") + " --out " + shell_quote(dir / "all"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.err.find("ETA"), std::string::npos) << "progress line with ETA on stderr";
  expect_metrics_and_consistent_tables(dir / "all", 9, true);

  const auto lines = result_lines(dir / "all");
  // c-rome-prefix scores efficacy after its test-time template, chosen by the dataset position.
  for (const auto& line : lines) {
    const std::string bare = line["request"]["prompt"].get<std::string>().replace(
        line["request"]["prompt"].get<std::string>().find("{}"), 2, line["request"]["subject"].get<std::string>());
    const int64_t position = line["position"].get<int64_t>();
    const std::string expected = line["method"] == "c-rome-prefix"
                                     ? kTemplates[1 + position % 20].substr(0, kTemplates[1 + position % 20].size() - 2) + bare
                                     : bare;
    EXPECT_EQ(line["efficacy_prompt"], expected);
    EXPECT_EQ(line["pre"]["efficacy_prompt"], bare);
  }

  // Restoration: the third case's c-rome-prefix edit run alone (from freshly loaded weights) is
  // bit-identical to the same edit made after eight others in one process.
  const int64_t third_id = lines[6]["case_id"].get<int64_t>();
  json one = tiny_config(dir, dataset, json::array({third_id}), {"c-rome-prefix"});
  one["group_size"] = 1;
  write_json(dir / "one.json", one);
  result = test::run_cli("batch --config " + shell_quote(dir / "one.json") + " --out " + shell_quote(dir / "one"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto alone = result_lines(dir / "one");
  ASSERT_EQ(alone.size(), 1u);
  json expected = without_timings(lines[8]), actual = without_timings(alone[0]);
  for (auto* line : {&expected, &actual}) line->erase("provenance");  // names the config file
  EXPECT_EQ(actual, expected);
}

// The grouped path (keys and v* of several requests in one pass and once per request, perplexity
// and evaluation from the edited layer on) against the one-by-one path of before: every discrete
// metric and the tables (tables.md) identical, the numbers within 1e-5 relative — those that follow
// from v* only when v* is the single path's (`same_v_star`; see the stories260K test).
void expect_paths_agree(const fs::path& one_by_one, const fs::path& grouped, bool same_v_star = true) {
  const auto before = result_lines(one_by_one), after = result_lines(grouped);
  ASSERT_EQ(before.size(), after.size());
  ASSERT_FALSE(before.empty());
  auto number = [](const json& line, const std::string& path) { return line.at(json::json_pointer(path)).get<double>(); };
  for (size_t i = 0; i < before.size(); ++i) {
    const json &a = before[i], &b = after[i];
    const std::string where = "line " + std::to_string(i) + " (case " + std::to_string(a["case_id"].get<int64_t>()) +
                              " " + a["method"].get<std::string>() + ")";
    ASSERT_EQ(a["case_id"], b["case_id"]) << where;
    ASSERT_EQ(a["method"], b["method"]) << where;
    for (const char* path : {"/denominator", "/cos_unprefixed_prefixed", "/perplexity_before/mean", "/pre/rewrite_logprob_new"})
      EXPECT_TRUE(test::scalar_close_rel(number(b, path), number(a, path), 1e-5, where + " " + path));
    for (const char* path : {"/update_norm", "/numerator_norm", "/right_vector_norm", "/perplexity_after/mean",
                             "/perplexity_after/median", "/perplexity_after/mean_log", "/logprob_target_new_after",
                             "/post/rewrite_logprob_new"})
      if (same_v_star) EXPECT_TRUE(test::scalar_close_rel(number(b, path), number(a, path), 1e-5, where + " " + path));
    for (const char* key : {"efficacy", "efficacy_pre", "generalisation", "locality", "locality_acc", "collapse",
                            "rewrite_prompts_correct", "paraphrase_prompts_correct", "neighborhood_prompts_correct",
                            "efficacy_prompt", "subject_first"})
      EXPECT_EQ(a[key], b[key]) << where << " " << key;
    EXPECT_EQ(a["post"]["locality_predicted"], b["post"]["locality_predicted"]) << where;
    EXPECT_EQ(a["optimisation"]["iterations"], b["optimisation"]["iterations"]) << where;
  }
  // The paper's tables as shown (tables.md, 4 significant digits) identical. tables.csv carries the
  // same statistics to 17 digits of float32 results: there the paths differ by rounding, most in
  // the confidence intervals (a difference of perplexities near their mean).
  EXPECT_EQ(without_start_time(test::read_if_exists(one_by_one / "tables.md")),
            without_start_time(test::read_if_exists(grouped / "tables.md")));
}

void run_batch_paths(const fs::path& config, const fs::path& dir, const std::vector<std::string>& paths) {
  for (const auto& path : paths) {
    const std::string flag = path == "one-by-one" ? " --one-by-one" : "";
    const auto result = test::run_cli("batch --config " + shell_quote(config) + " --out " + shell_quote(dir / path) + flag);
    ASSERT_EQ(result.exit_code, 0) << path << ": " << result.err;
  }
}

TEST(Batch, GroupedPathEqualsTheOneByOnePath) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("batch-grouped");
  json config = tiny_config(dir, "data/counterfact/counterfact_rome_most_orthogonal_10.json", {{"start", 0}, {"stop", 5}},
                            {"rome", "c-rome", "c-rome-prefix"});
  config["group_size"] = 3;  // a full group and a partial one
  write_json(dir / "run.json", config);
  run_batch_paths(dir / "run.json", dir, {"grouped", "one-by-one"});
  expect_paths_agree(dir / "one-by-one", dir / "grouped");
  for (const json& line : result_lines(dir / "grouped")) {  // requests sharing a pass: at most a block
    EXPECT_LE(line.value("group_requests", int64_t{1}), 3);  // written when more than one
  }
}

// The paper's table on a real model (configs/stories260k_tinystories.json: 24 requests x 3 methods,
// generated templates, 50 TinyStories paragraphs). With one request per group (v* bit for bit the
// single path's) every number agrees within 1e-5: the evaluation's reuse and the methods' sharing
// are checked here. In a group of 8 a request's v* moves by float rounding that Adam amplifies —
// test_value_group bounds it by how far padding the request's own batch moves the single path;
// here one case's final v* loss moves by 2e-4 and its perplexity after by 8e-5 — so for that run
// the keys, denominators, every discrete metric and the tables are compared, not the v*-dependent
// numbers.
TEST(Batch, Stories260kGroupedPathEqualsTheOneByOnePath) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("batch-grouped-stories260k");
  json config = json::parse(test::read_if_exists(fs::path(ROME_SOURCE_DIR) / "configs" / "stories260k_tinystories.json"));
  for (const char* key : {"model", "tokenizer"})
    config[key] = (fs::path(ROME_SOURCE_DIR) / "configs" / config[key].get<std::string>()).lexically_normal().string();
  for (json* path : {&config["dataset"]["path"], &config["perplexity"]["texts"]})
    *path = (fs::path(ROME_SOURCE_DIR) / "configs" / path->get<std::string>()).lexically_normal().string();
  write_json(dir / "grouped.json", config);
  config["group_size"] = 1;
  write_json(dir / "single.json", config);
  run_batch_paths(dir / "single.json", dir, {"one-by-one", "groups-of-one"});
  run_batch_paths(dir / "grouped.json", dir, {"grouped"});
  EXPECT_EQ(result_lines(dir / "grouped").size(), 72u);
  expect_paths_agree(dir / "one-by-one", dir / "groups-of-one");
  expect_paths_agree(dir / "one-by-one", dir / "grouped", /*same_v_star=*/false);
}

TEST(Batch, ZsreAndEasyEditRecords) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("batch-zsre-easyedit");
  write_json(dir / "zsre.json", tiny_config(dir, "data/zsre/zsre_mend_train-1k.json", {{"start", 0}, {"stop", 2}},
                                            {"rome", "c-rome"}));
  auto result = test::run_cli("batch --config " + shell_quote(dir / "zsre.json") + " --out " + shell_quote(dir / "zsre"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  expect_metrics_and_consistent_tables(dir / "zsre", 4, true);
  EXPECT_EQ(result_lines(dir / "zsre")[0]["dataset"], "zsre-rome");

  write_json(dir / "easy.json", tiny_config(dir, "data/counterfact/counterfact-edit-1k.easyedit.json",
                                            {{"start", 0}, {"stop", 2}}, {"rome"}));
  result = test::run_cli("batch --config " + shell_quote(dir / "easy.json") + " --out " + shell_quote(dir / "easy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  expect_metrics_and_consistent_tables(dir / "easy", 2, true);
}

TEST(Batch, InterruptedResumedAndShardedRunsGiveTheSameTables) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("batch-resume");
  write_json(dir / "run.json",
             tiny_config(dir, "data/zsre/zsre_mend_train-1k.json", {{"start", 0}, {"stop", 8}}, {"rome", "c-rome"}));
  const std::string config = (dir / "run.json").string();
  auto result = test::run_cli("batch --config " + shell_quote(config) + " --out " + shell_quote(dir / "whole"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  ASSERT_EQ(result_lines(dir / "whole").size(), 16u);

  // SIGTERM: the current edit is finished and written, the exit is non-zero with a message.
  pid_t pid = test::spawn_cli({"batch", "--config", config, "--out", (dir / "term").string()}, dir / "term.err");
  ASSERT_TRUE(wait_for_lines(pid, dir / "term" / "results.jsonl", 2)) << test::read_if_exists(dir / "term.err");
  ::kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 128 + SIGTERM) << test::read_if_exists(dir / "term.err");
  EXPECT_NE(test::read_if_exists(dir / "term.err").find("SIGTERM"), std::string::npos);
  const size_t after_term = result_lines(dir / "term").size();
  EXPECT_LT(after_term, 16u);
  // A kill in the middle of a write leaves a line without its newline; the resumed run drops it.
  std::ofstream(dir / "term" / "results.jsonl", std::ios::app) << R"({"case_id": 7, "position": 7, "meth)";
  result = test::run_cli("batch --config " + shell_quote(config) + " --out " + shell_quote(dir / "term"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.err.find("incomplete last line"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("resuming, " + std::to_string(after_term) + " of 16"), std::string::npos) << result.err;
  expect_same_results(dir / "whole", dir / "term");
  expect_same_tables(dir / "whole", dir / "term");

  // SIGKILL: nothing is flushed on the way out; what was synced is all there is.
  pid = test::spawn_cli({"batch", "--config", config, "--out", (dir / "kill").string()}, dir / "kill.err");
  ASSERT_TRUE(wait_for_lines(pid, dir / "kill" / "results.jsonl", 1)) << test::read_if_exists(dir / "kill.err");
  ::kill(pid, SIGKILL);
  wait_exit(pid);
  result = test::run_cli("batch --config " + shell_quote(config) + " --out " + shell_quote(dir / "kill"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  expect_same_results(dir / "whole", dir / "kill");
  expect_same_tables(dir / "whole", dir / "kill");

  // --max-edits stops early with exit 0; the rerun completes it.
  result = test::run_cli("batch --config " + shell_quote(config) + " --out " + shell_quote(dir / "steps") + " --max-edits 5");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result_lines(dir / "steps").size(), 5u);
  result = test::run_cli("batch --config " + shell_quote(config) + " --out " + shell_quote(dir / "steps"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  expect_same_tables(dir / "whole", dir / "steps");

  // Two shards merged equal the single run. A shard groups its own records (v* then differs from
  // the unsharded run's by float rounding), so this comparison runs one request per group.
  json one_per_group = json::parse(test::read_if_exists(config));
  one_per_group["group_size"] = 1;
  write_json(dir / "groups-of-one.json", one_per_group);
  const std::string ungrouped = (dir / "groups-of-one.json").string();
  result = test::run_cli("batch --config " + shell_quote(ungrouped) + " --out " + shell_quote(dir / "whole1"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  for (const char* shard : {"0/2", "1/2"}) {
    result = test::run_cli("batch --config " + shell_quote(ungrouped) + " --out " +
                           shell_quote(dir / ("shard" + std::string(1, shard[0]))) + " --shard " + shard);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    EXPECT_EQ(result_lines(dir / ("shard" + std::string(1, shard[0]))).size(), 8u);
  }
  result = test::run_cli("merge " + shell_quote(dir / "shard1") + " " + shell_quote(dir / "shard0") + " --out " + shell_quote(dir / "merged"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  expect_same_results(dir / "whole1", dir / "merged");
  expect_same_tables(dir / "whole1", dir / "merged");

  // A directory of another shard or config is refused, as is merging runs with other templates.
  result = test::run_cli("batch --config " + shell_quote(ungrouped) + " --out " + shell_quote(dir / "shard0") + " --shard 1/2");
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("shard"), std::string::npos) << result.err;
  json other = json::parse(test::read_if_exists(dir / "shard1" / "run.json"));
  other["context_templates"][1] = "Something else. {}";
  fs::create_directories(dir / "other");
  fs::copy_file(dir / "shard1" / "results.jsonl", dir / "other" / "results.jsonl");
  write_json(dir / "other" / "run.json", other);
  result = test::run_cli("merge " + shell_quote(dir / "shard0") + " " + shell_quote(dir / "other") + " --out " + shell_quote(dir / "bad"));
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("context_templates differ"), std::string::npos) << result.err;
}

TEST(Batch, SequentialEditsAccumulate) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("batch-sequential");
  json config = tiny_config(dir, "data/counterfact/counterfact_rome_least_orthogonal_10.json", {{"start", 0}, {"stop", 3}},
                            {"rome"});
  config["sequential"] = true;
  write_json(dir / "seq.json", config);
  auto result = test::run_cli("batch --config " + shell_quote(dir / "seq.json") + " --out " + shell_quote(dir / "seq"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto lines = result_lines(dir / "seq");
  ASSERT_EQ(lines.size(), 3u);
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_EQ(lines[i]["sequence_step"], i);
    EXPECT_TRUE(lines[i]["perplexity_after"]["mean"].is_number());
  }
  // The second edit starts from the first's model, so its pre-edit scores are not the original model's.
  config["sequential"] = false;
  config["group_size"] = 1;  // v* as the sequential run computes it (alone), bit for bit
  write_json(dir / "single.json", config);
  result = test::run_cli("batch --config " + shell_quote(dir / "single.json") + " --out " + shell_quote(dir / "single"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto single = result_lines(dir / "single");
  EXPECT_EQ(lines[0]["update_norm"], single[0]["update_norm"]);
  EXPECT_NE(lines[1]["pre"]["rewrite_logprob_new"], single[1]["pre"]["rewrite_logprob_new"]);

  // Resuming a sequential run replays the done edits to rebuild the model.
  result = test::run_cli("batch --config " + shell_quote(dir / "seq.json") + " --out " + shell_quote(dir / "seq2") + " --max-edits 2");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  result = test::run_cli("batch --config " + shell_quote(dir / "seq.json") + " --out " + shell_quote(dir / "seq2"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  expect_same_results(dir / "seq", dir / "seq2");

  result = test::run_cli("batch --config " + shell_quote(dir / "seq.json") + " --out " + shell_quote(dir / "seq3") + " --shard 0/2");
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("sequential"), std::string::npos) << result.err;
}

TEST(Batch, BadInputNamesFileAndField) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("batch-bad-input");
  json config = tiny_config(dir, "data/zsre/zsre_mend_train-1k.json", {{"start", 0}, {"stop", 2}}, {"rome"});
  config["dataset"]["path"] = (dir / "records.json").string();
  write_json(dir / "records.json", json::array({{{"prompt", "Lily ate"}, {"subject", "Lily"}, {"target_new", "cake"}},
                                                {{"prompt", "Tom ran"}, {"target_new", "home"}}}));
  write_json(dir / "bad.json", config);
  auto result = test::run_cli("batch --config " + shell_quote(dir / "bad.json") + " --out " + shell_quote(dir / "out"));
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("records.json: record 1: missing field \"subject\""), std::string::npos) << result.err;

  config["cases"] = json::array({12345});
  config["dataset"]["path"] = test::shared_path("data/zsre/zsre_mend_train-1k.json").string();
  write_json(dir / "bad.json", config);
  result = test::run_cli("batch --config " + shell_quote(dir / "bad.json") + " --out " + shell_quote(dir / "out"));
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("cases: case id 12345"), std::string::npos) << result.err;

  config["cases"] = json::array({534});  // zsRE's record with an empty "alt"
  write_json(dir / "bad.json", config);
  result = test::run_cli("batch --config " + shell_quote(dir / "bad.json") + " --out " + shell_quote(dir / "out"));
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("record 534: field \"alt\""), std::string::npos) << result.err;

  config.erase("cases");
  config["evaluation"] = {{"max_len", 40}};
  write_json(dir / "bad.json", config);
  result = test::run_cli("batch --config " + shell_quote(dir / "bad.json") + " --out " + shell_quote(dir / "out"));
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("evaluation: unknown field \"max_len\""), std::string::npos) << result.err;

  // Unknown fields of two nested objects: one error naming both, each with its closest name.
  config["dataset"]["fromat"] = "auto";
  config["evaluation"] = {{"max_lenght", 40}};
  write_json(dir / "bad.json", config);
  result = test::run_cli("batch --config " + shell_quote(dir / "bad.json") + " --out " + shell_quote(dir / "out"));
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.err.find("dataset: unknown field \"fromat\" (did you mean \"format\"?); "), std::string::npos)
      << result.err;
  EXPECT_NE(result.err.find("evaluation: unknown field \"max_lenght\" (did you mean \"max_length\"?)"), std::string::npos)
      << result.err;

  config["dataset"].erase("fromat");
  config.erase("evaluation");
  for (const json& size : {json(0), json(-3), json("8")}) {
    config["group_size"] = size;
    write_json(dir / "bad.json", config);
    result = test::run_cli("batch --config " + shell_quote(dir / "bad.json") + " --out " + shell_quote(dir / "out"));
    EXPECT_EQ(result.exit_code, 2) << size;
    EXPECT_NE(result.err.find("bad.json"), std::string::npos) << result.err;
    EXPECT_NE(result.err.find("group_size"), std::string::npos) << result.err;
  }
}

// `bench --throughput`: both paths on one CounterFact batch, their edits per hour, time per phase,
// and how far their results are apart.
TEST(BenchThroughput, ReportsBothPathsPerPhaseAndTheirAgreement) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("bench-throughput");
  const auto result = test::run_cli("bench --throughput --models tiny-gpt2 --cases 2 --group-size 2 --shared " +
                                    shell_quote(test::shared_path("")) + " --runs " + shell_quote(dir / "runs") +
                                    " --out " + shell_quote(dir / "report.json"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("the edits per hour"), std::string::npos) << result.out;
  const json report = json::parse(test::read_if_exists(dir / "report.json"));
  ASSERT_EQ(report.size(), 1u);
  const json& entry = report[0];
  EXPECT_EQ(entry["model"], "tiny-gpt2");
  for (const char* path : {"one_by_one", "grouped"}) {
    EXPECT_EQ(entry[path]["edits"], 6) << path;
    EXPECT_GT(entry[path]["edits_per_hour"].get<double>(), 0.0) << path;
    for (const char* phase : {"setup", "keys", "value_optimisation", "update", "perplexity", "evaluation", "other"})
      EXPECT_GE(entry[path]["phase_seconds"][phase].get<double>(), 0.0) << path << " " << phase;
  }
  EXPECT_NEAR(entry["speedup"].get<double>(),
              entry["grouped"]["edits_per_hour"].get<double>() / entry["one_by_one"]["edits_per_hour"].get<double>(), 1e-9);
  EXPECT_EQ(entry["comparison"]["pairs"], 6);
  // Whether tables.md is identical is reported, not asserted: with 2 cases of a random tiny model the
  // confidence interval is a difference of nearly equal perplexities (t = 12.7) and its 4th digit is
  // rounding. The per-edit numbers are compared.
  EXPECT_TRUE(entry["comparison"]["tables_md_identical"].is_boolean());
  const json& difference = entry["comparison"]["max_relative_difference"];
  for (const char* key : {"denominator", "update_norm", "perplexity_after"})
    EXPECT_LE(difference[key].get<double>(), 1e-5) << key;
  for (const char* key : {"efficacy", "generalisation", "locality"}) EXPECT_EQ(difference[key].get<double>(), 0.0) << key;
  // Both batch directories are kept with --runs, each a complete run.
  EXPECT_EQ(result_lines(dir / "runs" / "tiny-gpt2-one-by-one").size(), 6u);
  EXPECT_EQ(result_lines(dir / "runs" / "tiny-gpt2-grouped").size(), 6u);
}

}  // namespace
}  // namespace rc
