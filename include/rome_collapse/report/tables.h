#pragma once
// The paper's tables from a batch run's results.jsonl: per method, the collapse cases and the
// normal cases (and all), with Efficacy, Generalisation, Locality, perplexity after the edit,
// |denominator|, ‖ΔW‖ and the share of subject-first prompts. Computed from results.jsonl and the
// run's settings only (never from in-memory state), sorted by (dataset position, method) first,
// so a resumed, sharded-and-merged or uninterrupted run gives byte-identical tables.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace rc {

// results.jsonl as written line by line. A last line without its newline (a run killed mid-write)
// is dropped and reported; any other malformed line is an InputError naming file and line.
struct ResultsFile {
  std::vector<nlohmann::json> lines;
  size_t complete_bytes = 0;       // bytes up to and including the last complete line
  bool dropped_partial_line = false;
};
ResultsFile read_results_file(const std::filesystem::path& path);  // a missing file: no lines

struct TableSettings {
  std::vector<std::string> methods;             // row order
  std::optional<std::set<int64_t>> collapse_cases;  // given: collapse = case_id in it; else the line's "collapse"
  double collapse_ratio = 10;
  std::optional<double> perplexity_before;
};
// From run.json's "config" and "perplexity_before".
TableSettings table_settings_from_run(const nlohmann::json& run, const std::string& where);

struct TableRow {
  std::string method, group;  // group: "collapse" | "normal" | "all"
  int64_t cases = 0;
  double efficacy = NAN, generalisation = NAN, locality = NAN;  // means over cases (NaN: none)
  double ppl_mean = NAN, ppl_median = NAN;                       // of each case's mean perplexity after the edit
  double abs_denominator_median = NAN, abs_denominator_min = NAN;
  double update_norm_median = NAN, update_norm_max = NAN;
  double subject_first_share = NAN;
};
std::vector<TableRow> compute_tables(std::vector<nlohmann::json> results, const TableSettings& settings);

std::string tables_markdown(const std::vector<TableRow>& rows, const TableSettings& settings);
std::string tables_csv(const std::vector<TableRow>& rows);
nlohmann::json tables_summary(const std::vector<TableRow>& rows, const TableSettings& settings, size_t result_lines);

// Reads DIR/run.json and DIR/results.jsonl and writes DIR/tables.md, tables.csv, summary.json atomically.
std::vector<TableRow> write_tables(const std::filesystem::path& dir);

}  // namespace rc
