#include "rome_collapse/report/tables.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {
namespace {

using json = nlohmann::json;

double mean(const std::vector<double>& v) {
  if (v.empty()) return NAN;
  double sum = 0;
  for (double x : v) sum += x;
  return sum / double(v.size());
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t mid = v.size() / 2;
  return v.size() % 2 ? v[mid] : 0.5 * (v[mid - 1] + v[mid]);
}

double number_at(const json& line, const char* key) {
  if (!line.contains(key) || !line[key].is_number()) return NAN;
  return line[key].get<double>();
}

json number_or_null(double value) { return std::isnan(value) ? json(nullptr) : json(value); }

std::string format(double value, const char* spec) {
  if (std::isnan(value)) return "–";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, spec, value);
  return buffer;
}

std::string csv_number(double value) {
  if (std::isnan(value)) return "";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.17g", value);
  return buffer;
}

}  // namespace

ResultsFile read_results_file(const std::filesystem::path& path) {
  ResultsFile file;
  if (!std::filesystem::exists(path)) return file;
  const std::string contents = read_file(path);
  size_t start = 0, number = 0;
  while (start < contents.size()) {
    ++number;
    const size_t end = contents.find('\n', start);
    if (end == std::string::npos) {  // no newline: the write of this line never finished
      file.dropped_partial_line = true;
      break;
    }
    const std::string line = contents.substr(start, end - start);
    if (line.find_first_not_of(" \t\r") != std::string::npos) {
      file.lines.push_back(parse_json(line, path.string() + ": line " + std::to_string(number), "malformed JSON"));
    }
    start = end + 1;
    file.complete_bytes = start;
  }
  return file;
}

TableSettings table_settings_from_run(const json& run, const std::string& where) {
  TableSettings settings;
  if (!run.contains("config") || !run["config"].is_object()) throw InputError(where + ": missing field \"config\"");
  const json& config = run["config"];
  if (!config.contains("methods") || !config["methods"].is_array())
    throw InputError(where + ": config: missing field \"methods\"");
  for (const auto& m : config["methods"]) settings.methods.push_back(m.get<std::string>());
  if (config.contains("collapse_cases") && !config["collapse_cases"].is_null()) {
    settings.collapse_cases.emplace();
    for (const auto& id : config["collapse_cases"]) settings.collapse_cases->insert(id.get<int64_t>());
  }
  if (config.contains("collapse_ratio") && config["collapse_ratio"].is_number())
    settings.collapse_ratio = config["collapse_ratio"].get<double>();
  if (run.contains("perplexity_before") && run["perplexity_before"].is_object())
    settings.perplexity_before = run["perplexity_before"]["mean"].get<double>();
  return settings;
}

std::vector<TableRow> compute_tables(std::vector<json> results, const TableSettings& settings) {
  auto method_rank = [&](const json& line) {
    const auto it = std::find(settings.methods.begin(), settings.methods.end(), line["method"].get<std::string>());
    return it - settings.methods.begin();
  };
  // A fixed order makes every sum below independent of the order lines were written in.
  std::stable_sort(results.begin(), results.end(), [&](const json& a, const json& b) {
    const auto pa = a["position"].get<int64_t>(), pb = b["position"].get<int64_t>();
    return pa != pb ? pa < pb : method_rank(a) < method_rank(b);
  });
  std::vector<TableRow> rows;
  for (const auto& method : settings.methods) {
    for (const char* group : {"collapse", "normal", "all"}) {
      TableRow row;
      row.method = method;
      row.group = group;
      std::vector<double> efficacy, generalisation, locality, ppl, denominator, update_norm, subject_first;
      for (const auto& line : results) {
        if (line["method"] != method) continue;
        bool collapse = false;
        if (settings.collapse_cases)
          collapse = settings.collapse_cases->count(line["case_id"].get<int64_t>()) > 0;
        else
          collapse = line.contains("collapse") && line["collapse"].is_boolean() && line["collapse"].get<bool>();
        if ((row.group == "collapse" && !collapse) || (row.group == "normal" && collapse)) continue;
        ++row.cases;
        for (auto [key, values] : {std::pair<const char*, std::vector<double>*>{"efficacy", &efficacy},
                                   {"generalisation", &generalisation},
                                   {"locality", &locality}}) {
          const double v = number_at(line, key);
          if (!std::isnan(v)) values->push_back(v);
        }
        if (line.contains("perplexity_after") && line["perplexity_after"].is_object())
          ppl.push_back(line["perplexity_after"]["mean"].get<double>());
        denominator.push_back(std::abs(number_at(line, "denominator")));
        update_norm.push_back(number_at(line, "update_norm"));
        subject_first.push_back(line.value("subject_first", false) ? 1.0 : 0.0);
      }
      row.efficacy = mean(efficacy);
      row.generalisation = mean(generalisation);
      row.locality = mean(locality);
      row.ppl_mean = mean(ppl);
      row.ppl_median = median(ppl);
      row.abs_denominator_median = median(denominator);
      row.abs_denominator_min = denominator.empty() ? NAN : *std::min_element(denominator.begin(), denominator.end());
      row.update_norm_median = median(update_norm);
      row.update_norm_max = update_norm.empty() ? NAN : *std::max_element(update_norm.begin(), update_norm.end());
      row.subject_first_share = mean(subject_first);
      rows.push_back(row);
    }
  }
  return rows;
}

std::string tables_markdown(const std::vector<TableRow>& rows, const TableSettings& settings) {
  std::string out = "# ROME / C-ROME batch results\n\n";
  if (settings.collapse_cases)
    out += "Collapse cases: the " + std::to_string(settings.collapse_cases->size()) + " case ids given in the config.\n";
  else
    out += "Collapse cases: mean perplexity after the edit above " + format(settings.collapse_ratio, "%g") +
           " × the unedited model's.\n";
  if (settings.perplexity_before)
    out += "Perplexity of the unedited model: " + format(*settings.perplexity_before, "%.4f") + ".\n";
  out += "Efficacy, Generalisation and Locality are the paper's token accuracies (EasyEdit), in %.\n\n";
  out += "| method | cases | n | Efficacy | Generalisation | Locality | ppl mean | ppl median | |den| median | "
         "|den| min | ‖ΔW‖ median | ‖ΔW‖ max | subject first |\n";
  out += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& r : rows) {
    out += "| " + r.method + " | " + r.group + " | " + std::to_string(r.cases) + " | " + format(100 * r.efficacy, "%.2f") +
           " | " + format(100 * r.generalisation, "%.2f") + " | " + format(100 * r.locality, "%.2f") + " | " +
           format(r.ppl_mean, "%.4g") + " | " + format(r.ppl_median, "%.4g") + " | " +
           format(r.abs_denominator_median, "%.4g") + " | " + format(r.abs_denominator_min, "%.4g") + " | " +
           format(r.update_norm_median, "%.4g") + " | " + format(r.update_norm_max, "%.4g") + " | " +
           format(100 * r.subject_first_share, "%.0f%%") + " |\n";
  }
  return out;
}

std::string tables_csv(const std::vector<TableRow>& rows) {
  std::string out =
      "method,cases,n,efficacy,generalisation,locality,ppl_mean,ppl_median,abs_denominator_median,"
      "abs_denominator_min,update_norm_median,update_norm_max,subject_first_share\n";
  for (const auto& r : rows)
    out += r.method + "," + r.group + "," + std::to_string(r.cases) + "," + csv_number(r.efficacy) + "," +
           csv_number(r.generalisation) + "," + csv_number(r.locality) + "," + csv_number(r.ppl_mean) + "," +
           csv_number(r.ppl_median) + "," + csv_number(r.abs_denominator_median) + "," +
           csv_number(r.abs_denominator_min) + "," + csv_number(r.update_norm_median) + "," +
           csv_number(r.update_norm_max) + "," + csv_number(r.subject_first_share) + "\n";
  return out;
}

json tables_summary(const std::vector<TableRow>& rows, const TableSettings& settings, size_t result_lines) {
  json methods = json::object();
  for (const auto& r : rows)
    methods[r.method][r.group] = {{"cases", r.cases},
                                  {"efficacy", number_or_null(r.efficacy)},
                                  {"generalisation", number_or_null(r.generalisation)},
                                  {"locality", number_or_null(r.locality)},
                                  {"ppl_mean", number_or_null(r.ppl_mean)},
                                  {"ppl_median", number_or_null(r.ppl_median)},
                                  {"abs_denominator_median", number_or_null(r.abs_denominator_median)},
                                  {"abs_denominator_min", number_or_null(r.abs_denominator_min)},
                                  {"update_norm_median", number_or_null(r.update_norm_median)},
                                  {"update_norm_max", number_or_null(r.update_norm_max)},
                                  {"subject_first_share", number_or_null(r.subject_first_share)}};
  json collapse_rule = settings.collapse_cases
                           ? json{{"collapse_cases", std::vector<int64_t>(settings.collapse_cases->begin(),
                                                                          settings.collapse_cases->end())}}
                           : json{{"collapse_ratio", settings.collapse_ratio}};
  return {{"result_lines", result_lines},
          {"perplexity_before", settings.perplexity_before ? json(*settings.perplexity_before) : json(nullptr)},
          {"collapse_rule", collapse_rule},
          {"method_order", settings.methods},
          {"methods", methods}};
}

std::vector<TableRow> write_tables(const std::filesystem::path& dir) {
  const auto run_path = dir / "run.json";
  const json run = parse_json(read_file(run_path), run_path.string(), "malformed JSON");
  const TableSettings settings = table_settings_from_run(run, run_path.string());
  const ResultsFile results = read_results_file(dir / "results.jsonl");
  const std::vector<TableRow> rows = compute_tables(results.lines, settings);
  write_file_atomic(dir / "tables.md", tables_markdown(rows, settings));
  write_file_atomic(dir / "tables.csv", tables_csv(rows));
  write_file_atomic(dir / "summary.json", json_text(tables_summary(rows, settings, results.lines.size())) + "\n");
  return rows;
}

}  // namespace rc
