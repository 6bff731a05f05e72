// `rome-collapse bench --throughput`: a batch's edits per hour (perplexity and the paper's evaluation
// included) on the path before issue 19 (each edit alone, every pass from the first layer) and on
// the grouped path (keys and v* of several requests in one pass and once per request, perplexity
// and evaluation from the edited layer on), side by side in one run on the same batch, with the
// time per phase and how far the two paths' results are apart.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "bench_models.h"
#include "commands.h"
#include "rome_collapse/experiment/batch.h"
#include "rome_collapse/experiment/journal.h"
#include "rome_collapse/experiment/tables.h"
#include "rome_collapse/text/tokenizer.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc::cli {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kDataset = "data/counterfact/counterfact-edit-1k.easyedit.json";
constexpr const char* kPerplexityTexts = "data/me-ppl/ME-PPL_50.json";

// The batch both paths run: the first `cases` CounterFact records, the three methods, ME-PPL_50,
// the paper's evaluation, the model's bench hparams with ROME's early stop.
BatchRun throughput_run(const BenchModel& bench, const BenchArgs& args, const Dataset& dataset, const fs::path& dir) {
  BatchRun run;
  run.config = bench.config;
  run.config.hparams.early_stop_loss = RomeHparams{}.early_stop_loss;  // as a real batch runs
  run.config.perplexity_texts = (fs::path(args.shared) / kPerplexityTexts).string();
  run.config.perplexity_batch_size = 10;
  run.config.record_timings = true;
  run.config.source = "bench --throughput " + bench.name;
  run.config.raw = {{"bench", bench.name}, {"cases", args.cases}, {"group_size", args.group_size}};
  run.config.config_sha256 = sha256_hex(run.config.raw.dump());
  run.settings.dataset_path = fs::path(args.shared) / kDataset;
  run.settings.methods = {EditMethod::Rome, EditMethod::CRome, EditMethod::CRomePrefix};
  run.settings.cases = {{"start", 0}, {"stop", args.cases}};
  run.settings.group_size = args.group_size;
  run.dataset = dataset;
  run.records = select_batch_records(run.dataset, run.settings, Shard{}, run.config.source);
  run.dir = dir;
  run.fingerprint_model = false;  // random weights are not a file
  return run;
}

// The GPT-2 shapes read text with GPT-2's own tokenizer (their vocabulary), so that the perplexity
// texts and the records have the token counts they have on the real model.
void use_real_tokenizer(BenchModel& bench, const BenchArgs& args) {
  const fs::path gpt2 = fs::path(args.shared) / "tokenizers/gpt2";
  if (bench.name.rfind("gpt2-", 0) != 0 || bench.loaded.tokenizer_path.rfind("builtin:", 0) != 0) return;
  if (!fs::exists(gpt2)) throw InputError(gpt2.string() + ": not found (bench --throughput " + bench.name + " needs it)");
  bench.loaded.tokenizer = load_tokenizer(gpt2);
  bench.loaded.tokenizer_path = gpt2.string();
  bench.loaded.add_bos = false;
}

struct PathRun {
  BatchOutcome outcome;
  double seconds = 0;  // run_batch's wall time: the unedited passes and the edits
};

PathRun run_path(BenchModel& bench, const BenchArgs& args, const Dataset& dataset, const fs::path& dir,
                 bool one_by_one) {
  std::error_code ignored;
  fs::remove_all(dir, ignored);
  fs::create_directories(dir);
  BatchRun run = throughput_run(bench, args, dataset, dir);
  BatchOptions options;
  options.one_by_one = one_by_one;
  const auto start = std::chrono::steady_clock::now();
  PathRun path;
  path.outcome = run_batch(run, options, &bench.loaded);
  path.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return path;
}

std::map<std::string, json> results_by_pair(const fs::path& dir) {
  std::map<std::string, json> out;
  for (const json& line : read_results_file(dir / "results.jsonl").lines)
    out[pair_key(line["position"].get<int64_t>(), line["method"].get<std::string>())] = line;
  return out;
}

double relative_difference(const json& a, const json& b) {
  if (a.is_null() || b.is_null()) return a == b ? 0.0 : INFINITY;
  const double x = a.get<double>(), y = b.get<double>();
  return std::abs(x - y) / std::max(std::abs(y), 1e-300);
}

// tables.md without its "- Run started:" line (the one line two runs differ in by design).
std::string without_start_line(const std::string& text) {
  const size_t at = text.find("- Run started: ");
  return at == std::string::npos ? text : text.substr(0, at) + text.substr(text.find('\n', at) + 1);
}

// The largest relative difference between two tables.csv files' numeric cells (infinite when
// their shapes or text cells differ).
double csv_difference(const std::string& a, const std::string& b) {
  auto cells = [](const std::string& text) {
    std::vector<std::string> out(1);
    for (char c : text) {
      if (c == ',' || c == '\n') out.emplace_back();
      else out.back() += c;
    }
    return out;
  };
  const auto x = cells(a), y = cells(b);
  if (x.size() != y.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    char *end_x = nullptr, *end_y = nullptr;
    const double u = std::strtod(x[i].c_str(), &end_x), v = std::strtod(y[i].c_str(), &end_y);
    const bool numbers = !x[i].empty() && *end_x == '\0' && !y[i].empty() && *end_y == '\0';
    worst = std::max(worst, numbers ? relative_difference(v, u) : (x[i] == y[i] ? 0.0 : INFINITY));
  }
  return worst;
}

// How far the grouped path's results are from the one-by-one path's: max relative difference per
// number over all (case, method) pairs, and whether the tables are the same.
json compare_paths(const fs::path& one_by_one, const fs::path& grouped) {
  const auto before = results_by_pair(one_by_one), after = results_by_pair(grouped);
  json differences = {{"denominator", 0.0}, {"update_norm", 0.0}, {"perplexity_after", 0.0}, {"efficacy", 0.0},
                      {"generalisation", 0.0}, {"locality", 0.0}};
  for (const auto& [key, line] : before) {
    if (!after.count(key)) throw std::runtime_error("bench: the grouped run has no result for " + key);
    const json& other = after.at(key);
    for (auto& item : differences.items()) {
      const json& a = item.key() == "perplexity_after" ? other["perplexity_after"]["mean"] : other[item.key()];
      const json& b = item.key() == "perplexity_after" ? line["perplexity_after"]["mean"] : line[item.key()];
      item.value() = std::max(item.value().get<double>(), relative_difference(a, b));
    }
  }
  return {{"pairs", before.size()},
          {"pairs_grouped", after.size()},
          {"max_relative_difference", differences},
          {"tables_md_identical", without_start_line(read_file(one_by_one / "tables.md")) ==
                                      without_start_line(read_file(grouped / "tables.md"))},
          {"tables_csv_max_relative_difference",
           csv_difference(read_file(one_by_one / "tables.csv"), read_file(grouped / "tables.csv"))}};
}

json path_summary(const PathRun& path) {
  const double edits = double(path.outcome.new_edits);
  json phases = path.outcome.phase_seconds;
  phases["setup"] = std::max(0.0, path.seconds - path.outcome.seconds);  // templates, unedited perplexity
  return {{"edits", path.outcome.new_edits}, {"seconds", path.seconds}, {"edits_per_hour", edits * 3600 / path.seconds},
          {"s_per_edit", path.seconds / edits}, {"phase_seconds", phases}};
}

void print_throughput(const json& entry) {
  std::printf("%-12s %-11s %8s %8s %7s %7s %7s %7s %10s %10s %7s\n", "model", "path", "edits/h", "run s", "setup",
              "keys", "v*", "update", "perplexity", "evaluation", "other");
  for (const char* path : {"one_by_one", "grouped"}) {
    const json& r = entry[path];
    const json& p = r["phase_seconds"];
    auto phase = [&](const char* name) { return p.contains(name) ? p[name].get<double>() : 0.0; };
    std::printf("%-12s %-11s %8.0f %8.1f %7.1f %7.1f %7.1f %7.1f %10.1f %10.1f %7.1f\n",
                entry["model"].get<std::string>().c_str(), path, r["edits_per_hour"].get<double>(),
                r["seconds"].get<double>(), phase("setup"), phase("keys"), phase("value_optimisation"), phase("update"),
                phase("perplexity"), phase("evaluation"), phase("other"));
  }
  const json& d = entry["comparison"]["max_relative_difference"];
  std::printf("%s: %.2fx the edits per hour; max relative difference: denominator %.1e, update norm %.1e, "
              "perplexity after %.1e; tables.md identical: %s (tables.csv within %.1e)\n",
              entry["model"].get<std::string>().c_str(), entry["speedup"].get<double>(), d["denominator"].get<double>(),
              d["update_norm"].get<double>(), d["perplexity_after"].get<double>(),
              entry["comparison"]["tables_md_identical"].get<bool>() ? "yes" : "NO",
              entry["comparison"]["tables_csv_max_relative_difference"].get<double>());
}

}  // namespace

json bench_throughput(const std::string& name, const BenchArgs& args) {
  BenchModel bench = make_model(name, args.shared, args.steps, args.device, args.dtype);
  use_real_tokenizer(bench, args);
  const fs::path dataset_path = fs::path(args.shared) / kDataset;
  if (!fs::exists(dataset_path)) throw InputError(dataset_path.string() + ": not found (pass --shared DIR)");
  const Dataset dataset = read_dataset(dataset_path, DatasetFormat::Auto);
  const fs::path runs = args.runs.empty()
                            ? fs::temp_directory_path() / ("rome-collapse-throughput-" + std::to_string(::getpid()))
                            : fs::path(args.runs);
  const PathRun one_by_one = run_path(bench, args, dataset, runs / (name + "-one-by-one"), /*one_by_one=*/true);
  const PathRun grouped = run_path(bench, args, dataset, runs / (name + "-grouped"), /*one_by_one=*/false);
  json entry = {{"model", name}, {"mode", "throughput"}, {"device", args.device}, {"dtype", args.dtype},
                {"cases", args.cases}, {"methods", 3}, {"group_size", args.group_size},
                {"layer", bench.config.hparams.layer}, {"steps", bench.config.hparams.v_num_grad_steps},
                {"one_by_one", path_summary(one_by_one)}, {"grouped", path_summary(grouped)}};
  entry["speedup"] = entry["grouped"]["edits_per_hour"].get<double>() / entry["one_by_one"]["edits_per_hour"].get<double>();
  entry["comparison"] = compare_paths(runs / (name + "-one-by-one"), runs / (name + "-grouped"));
  if (args.runs.empty()) {
    std::error_code ignored;
    fs::remove_all(runs, ignored);
  }
  print_throughput(entry);
  return entry;
}

}  // namespace rc::cli
