// The batch tables from results.jsonl lines alone: valid Markdown (every row has the header's cell
// count, "|" escaped), a heading naming the run, 95% confidence intervals beside the means, the
// same units (percent) in Markdown and CSV, and the counts of edits that did not take.
#include <cmath>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/experiment/tables.h"

namespace rc {
namespace {

using json = nlohmann::json;

// Cells of one Markdown table row: split on "|" not preceded by a backslash, outer pipes dropped.
std::vector<std::string> markdown_cells(const std::string& row) {
  std::vector<std::string> cells;
  std::string cell;
  for (size_t i = 0; i < row.size(); ++i) {
    if (row[i] == '|' && (i == 0 || row[i - 1] != '\\')) {
      cells.push_back(cell);
      cell.clear();
    } else {
      cell += row[i];
    }
  }
  cells.push_back(cell);
  // "| a | b |" splits into "", " a ", " b ", "": the outer empties are not cells.
  if (!cells.empty() && cells.front().find_first_not_of(' ') == std::string::npos) cells.erase(cells.begin());
  if (!cells.empty() && cells.back().find_first_not_of(' ') == std::string::npos) cells.pop_back();
  return cells;
}

std::vector<std::string> table_lines(const std::string& markdown) {
  std::vector<std::string> lines;
  std::istringstream in(markdown);
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line[0] == '|') lines.push_back(line);
  return lines;
}

json result_line(int64_t position, const std::string& method, double efficacy, double locality, bool took,
                 bool loss_rose) {
  return {{"position", position},      {"case_id", 100 + position},
          {"method", method},          {"efficacy", efficacy},
          {"generalisation", 0.5},     {"locality", locality},
          {"denominator", -0.25},      {"update_norm", 1.5 + position},
          {"subject_first", position % 2 == 0},
          {"perplexity_after", {{"mean", 10.0 + position}}},
          {"collapse", false},
          {"convergence", {{"took", took}, {"loss_rose", loss_rose}}}};
}

TableSettings settings_of_a_run() {
  const json run = {{"version", "9.9.9"},
                    {"started_utc", "2026-12-01 14:35 UTC"},
                    {"template_source", "generated"},
                    {"context_templates", {"{}", "A. {}", "B. {}"}},
                    {"config", {{"methods", {"rome", "c-rome"}}, {"dataset", {{"path", "data/cf.json"}, {"format", "counterfact-rome"}, {"records", 4}}}}},
                    {"provenance", {{"model", "models/m"}, {"architecture", "gpt2"}, {"hparams", {{"layer", 17}}}}},
                    {"perplexity_before", {{"mean", 9.5}}}};
  return table_settings_from_run(run, "run.json");
}

std::vector<json> four_cases() {
  std::vector<json> lines;
  const double efficacy[] = {1, 0, 1, 0};
  for (int64_t p = 0; p < 4; ++p) {
    lines.push_back(result_line(p, "rome", efficacy[p], 0.75, efficacy[p] > 0, p == 1));
    lines.push_back(result_line(p, "c-rome", 1.0, 1.0, true, false));
  }
  return lines;
}

TEST(Tables, MarkdownRowsHaveTheHeadersCellCount) {
  const TableSettings settings = settings_of_a_run();
  const std::string markdown = tables_markdown(compute_tables(four_cases(), settings), settings);
  const auto lines = table_lines(markdown);
  ASSERT_EQ(lines.size(), 2u + 2 * 3) << markdown;  // header, divider, 3 groups per method
  const size_t header_cells = markdown_cells(lines[0]).size();
  EXPECT_EQ(header_cells, 15u) << lines[0];
  for (const auto& line : lines) EXPECT_EQ(markdown_cells(line).size(), header_cells) << line;
  EXPECT_NE(lines[0].find("\\|den\\| median"), std::string::npos) << "the |den| headers are escaped";
  EXPECT_EQ(markdown_cell("a|b"), "a\\|b");
}

TEST(Tables, HeadingNamesTheRun) {
  const TableSettings settings = settings_of_a_run();
  const std::string markdown = tables_markdown(compute_tables(four_cases(), settings), settings);
  for (const char* needle : {"Model: `models/m` (gpt2)", "Dataset: `data/cf.json` (counterfact-rome, 4 records)",
                             "Edited layer: 17", "Context templates: generated (3", "rome-collapse 9.9.9",
                             "Run started: 2026-12-01 14:35 UTC", "95% confidence interval"})
    EXPECT_NE(markdown.find(needle), std::string::npos) << needle << "\n" << markdown;
}

TEST(Tables, ConfidenceIntervalsAndTheSameUnitsInMarkdownAndCsv) {
  const TableSettings settings = settings_of_a_run();
  const auto rows = compute_tables(four_cases(), settings);
  const TableRow& rome_all = rows[2];
  ASSERT_EQ(rome_all.method, "rome");
  ASSERT_EQ(rome_all.group, "all");
  // Efficacy 1, 0, 1, 0: mean 0.5, sample sd 0.57735, t(0.975, 3) = 3.1824, half-width t·sd/√4.
  EXPECT_NEAR(rome_all.efficacy, 0.5, 1e-12);
  EXPECT_NEAR(rome_all.efficacy_ci95, 3.1824 * std::sqrt(1.0 / 3.0) / 2.0, 1e-9);
  EXPECT_EQ(rome_all.locality_ci95, 0.0);  // no spread
  EXPECT_EQ(rome_all.not_taken, 2);
  EXPECT_EQ(rome_all.loss_rose, 1);
  EXPECT_TRUE(std::isnan(rows[0].efficacy_ci95)) << "no collapse cases: no interval";

  const std::string markdown = tables_markdown(rows, settings);
  EXPECT_NE(markdown.find("| rome | all | 4 | 50.00 ± 91.87 | 50.00 ± 0.00 | 75.00 ± 0.00 |"), std::string::npos) << markdown;
  const std::string csv = tables_csv(rows);
  EXPECT_NE(csv.find("efficacy_pct,efficacy_pct_ci95"), std::string::npos) << csv;
  EXPECT_NE(csv.find("rome,all,4,50,91.8"), std::string::npos) << csv;  // percent, as in tables.md
  // summary.json keeps fractions, and says so.
  const json summary = tables_summary(rows, settings, 8);
  EXPECT_EQ(summary["methods"]["rome"]["all"]["efficacy"], 0.5);
  EXPECT_EQ(summary["methods"]["rome"]["all"]["not_taken"], 2);
  EXPECT_EQ(summary["run"]["layer"], 17);
  EXPECT_NE(summary["units"].get<std::string>().find("fractions"), std::string::npos);
}

TEST(Tables, StudentQuantiles) {
  EXPECT_NEAR(student_t_975(1), 12.7062, 1e-4);
  EXPECT_NEAR(student_t_975(23), 2.0687, 1e-4);
  EXPECT_NEAR(student_t_975(31), 2.0395, 1e-4);
  EXPECT_NEAR(student_t_975(100), 1.9840, 1e-4);
  EXPECT_TRUE(std::isnan(student_t_975(0)));
}

}  // namespace
}  // namespace rc
