// merge_batch_runs (batch.h): the shards of one run joined into one directory.
#include <algorithm>
#include <iostream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "rome_collapse/experiment/batch.h"
#include "rome_collapse/experiment/journal.h"
#include "rome_collapse/experiment/tables.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/run_guard.h"

namespace rc {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

struct MergedShards {
  json first_run;
  std::vector<std::string> methods;
  std::map<std::string, json> lines;  // by pair_key
  std::set<int64_t> positions;
  json merged_from = json::array();
};

// One shard's run.json (of the same config and templates as the first) and its result lines.
void add_shard(MergedShards& merged, const fs::path& dir, const std::string& first_dir) {
  const json run = read_run_json(dir / "run.json");
  if (merged.first_run.is_null()) {
    merged.first_run = run;
    merged.methods = table_settings_from_run(run, (dir / "run.json").string()).methods;
  } else {
    if (run.value("config_sha256", "") != merged.first_run.value("config_sha256", ""))
      throw InputError((dir / "run.json").string() + ": a run of another config than " + first_dir +
                       " (config_sha256 differs)");
    if (run["context_templates"] != merged.first_run["context_templates"])
      throw InputError((dir / "run.json").string() + ": context_templates differ from those of " + first_dir +
                       "; shards must share the templates (give them in the config, or copy run.json's)");
  }
  merged.merged_from.push_back({{"dir", dir.string()}, {"shard", run["shard"]}});
  for (const auto& p : run["positions"]) merged.positions.insert(p.get<int64_t>());
  const ResultsFile results = read_results_file(dir / "results.jsonl");
  if (results.dropped_partial_line)
    std::cerr << "merge: ignoring an incomplete last line of " << (dir / "results.jsonl").string() << "\n";
  for (const auto& line : results.lines) {
    const std::string key = pair_key(line.at("position").get<int64_t>(), line.at("method").get<std::string>());
    auto [it, inserted] = merged.lines.emplace(key, line);
    if (!inserted && (it->second["update_norm"] != line["update_norm"] || it->second["efficacy"] != line["efficacy"]))
      throw InputError((dir / "results.jsonl").string() + ": case at position " + key +
                       " also appears, with other values, in an earlier directory");
  }
}

// The lines by dataset position, then in the run's method order.
std::vector<json> ordered_lines(const MergedShards& merged) {
  std::vector<json> ordered;
  for (const auto& [key, line] : merged.lines) ordered.push_back(line);
  const std::vector<std::string>& methods = merged.methods;
  auto rank = [&](const json& line) {
    return std::find(methods.begin(), methods.end(), line["method"].get<std::string>()) - methods.begin();
  };
  std::stable_sort(ordered.begin(), ordered.end(), [&](const json& a, const json& b) {
    const auto pa = a["position"].get<int64_t>(), pb = b["position"].get<int64_t>();
    return pa != pb ? pa < pb : rank(a) < rank(b);
  });
  return ordered;
}

}  // namespace

size_t merge_batch_runs(const std::vector<fs::path>& dirs, const fs::path& out) {
  if (dirs.empty()) throw InputError("merge: name at least one batch directory");
  MergedShards merged;
  for (const fs::path& dir : dirs) add_shard(merged, dir, dirs[0].string());
  const std::vector<json> ordered = ordered_lines(merged);
  const size_t expected = merged.positions.size() * merged.methods.size();
  if (ordered.size() < expected)
    std::cerr << "merge: " << ordered.size() << " of " << expected
              << " (case, method) results present; the tables cover those only (resume the shards to complete them)\n";
  std::string text;
  for (const auto& line : ordered) text += json_text(line, -1) + "\n";
  std::error_code dir_error;
  fs::create_directories(out, dir_error);
  if (dir_error) fail_input(out.string(), "cannot create the result directory: " + dir_error.message());
  const RunLock lock(out / ".lock", "batch directory " + out.string());
  json run = merged.first_run;
  run["shard"] = {{"index", 0}, {"count", 1}};
  run["positions"] = std::vector<int64_t>(merged.positions.begin(), merged.positions.end());
  run["merged_from"] = merged.merged_from;
  write_file_atomic(out / "run.json", json_text(run) + "\n");
  write_file_atomic(out / "results.jsonl", text);
  write_tables(out);
  return ordered.size();
}

}  // namespace rc
