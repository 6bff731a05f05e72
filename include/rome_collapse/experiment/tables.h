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

// What the tables' heading says about the run (from run.json; empty where an older run.json lacks it).
struct RunFacts {
  std::string model, architecture, dataset, dataset_format, template_source, tool_version;
  std::optional<int64_t> layer, dataset_records, templates;
  std::string started_utc;  // when the run was first started; the one line that differs between runs
};

struct TableSettings {
  std::vector<std::string> methods;             // row order
  std::optional<std::set<int64_t>> collapse_cases;  // given: collapse = case_id in it; else the line's "collapse"
  double collapse_ratio = 10;
  std::optional<double> perplexity_before;
  RunFacts run;
};
// From run.json's "config", "provenance", "perplexity_before" and the run's facts.
TableSettings table_settings_from_run(const nlohmann::json& run, const std::string& where);

struct TableRow {
  std::string method, group;  // group: "collapse" | "normal" | "all"
  int64_t cases = 0;
  double efficacy = NAN, generalisation = NAN, locality = NAN;  // means over cases (NaN: none), fractions
  // Half-widths of the means' 95% confidence intervals (Student t over cases; NaN below 2 cases).
  double efficacy_ci95 = NAN, generalisation_ci95 = NAN, locality_ci95 = NAN, ppl_mean_ci95 = NAN;
  double ppl_mean = NAN, ppl_median = NAN;                       // of each case's mean perplexity after the edit
  double abs_denominator_median = NAN, abs_denominator_min = NAN;
  double update_norm_median = NAN, update_norm_max = NAN;
  double subject_first_share = NAN;
  int64_t not_taken = 0;  // edits whose result says convergence.took == false (efficacy 0, NLL not lower)
  int64_t loss_rose = 0;  // edits whose v* optimisation ended above its initial loss
};

// The 0.975 quantile of Student's t with `degrees` degrees of freedom (95% two-sided intervals).
double student_t_975(int64_t degrees);
// A Markdown table cell: "|" escaped so that the row keeps its cell count.
std::string markdown_cell(const std::string& text);
std::vector<TableRow> compute_tables(std::vector<nlohmann::json> results, const TableSettings& settings);

// tables.md and tables.csv give accuracies and the subject-first share in percent (both files);
// summary.json keeps fractions.
std::string tables_markdown(const std::vector<TableRow>& rows, const TableSettings& settings);
std::string tables_csv(const std::vector<TableRow>& rows);
nlohmann::json tables_summary(const std::vector<TableRow>& rows, const TableSettings& settings, size_t result_lines);

// Reads DIR/run.json and DIR/results.jsonl and writes DIR/tables.md, tables.csv, summary.json atomically.
std::vector<TableRow> write_tables(const std::filesystem::path& dir);

}  // namespace rc
