#include "rome_collapse/experiment/tables.h"

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

// Half-width of the 95% confidence interval of the mean (Student t, sample standard deviation).
double ci95(const std::vector<double>& v) {
  if (v.size() < 2) return NAN;
  const double m = mean(v);
  double squares = 0;
  for (double x : v) squares += (x - m) * (x - m);
  const double sd = std::sqrt(squares / double(v.size() - 1));
  return student_t_975(static_cast<int64_t>(v.size()) - 1) * sd / std::sqrt(double(v.size()));
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

// "59.72 ± 3.10" (the ± part left out where the interval is undefined).
std::string with_ci(double value, double ci, const char* spec) {
  if (std::isnan(value)) return "–";
  return std::isnan(ci) ? format(value, spec) : format(value, spec) + " ± " + format(ci, spec);
}

std::string string_at(const json& object, const char* key) {
  return object.is_object() && object.contains(key) && object[key].is_string() ? object[key].get<std::string>() : "";
}

std::optional<int64_t> integer_at(const json& object, const char* key) {
  if (!object.is_object() || !object.contains(key) || !object[key].is_number_integer()) return std::nullopt;
  return object[key].get<int64_t>();
}

RunFacts run_facts(const json& run) {
  RunFacts facts;
  const json& provenance = run.contains("provenance") ? run["provenance"] : json();
  const json& dataset = run["config"].contains("dataset") ? run["config"]["dataset"] : json();
  facts.model = string_at(provenance, "model");
  facts.architecture = string_at(provenance, "architecture");
  if (provenance.is_object() && provenance.contains("hparams")) facts.layer = integer_at(provenance["hparams"], "layer");
  facts.dataset = string_at(dataset, "path");
  facts.dataset_format = string_at(dataset, "format");
  facts.dataset_records = integer_at(dataset, "records");
  facts.template_source = string_at(run, "template_source");
  if (run.contains("context_templates") && run["context_templates"].is_array())
    facts.templates = static_cast<int64_t>(run["context_templates"].size());
  facts.tool_version = string_at(run, "version");
  facts.started_utc = string_at(run, "started_utc");
  return facts;
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
  settings.run = run_facts(run);
  return settings;
}

double student_t_975(int64_t degrees) {
  static const double table[] = {12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
                                 2.2010,  2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
                                 2.0796,  2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423};
  if (degrees < 1) return NAN;
  if (degrees <= 30) return table[degrees - 1];
  // Cornish-Fisher expansion around the normal quantile: within 2e-6 of the exact value from 30 on.
  const double z = 1.959963984540054, v = double(degrees);
  return z + (z * z * z + z) / (4 * v) + (5 * std::pow(z, 5) + 16 * z * z * z + 3 * z) / (96 * v * v) +
         (3 * std::pow(z, 7) + 19 * std::pow(z, 5) + 17 * z * z * z - 15 * z) / (384 * v * v * v);
}

std::string markdown_cell(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += '\\';
    out += c;
  }
  return out;
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
        if (line.contains("convergence") && line["convergence"].is_object()) {
          row.not_taken += line["convergence"].value("took", true) ? 0 : 1;
          row.loss_rose += line["convergence"].value("loss_rose", false) ? 1 : 0;
        }
      }
      row.efficacy = mean(efficacy);
      row.generalisation = mean(generalisation);
      row.locality = mean(locality);
      row.ppl_mean = mean(ppl);
      row.efficacy_ci95 = ci95(efficacy);
      row.generalisation_ci95 = ci95(generalisation);
      row.locality_ci95 = ci95(locality);
      row.ppl_mean_ci95 = ci95(ppl);
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
  const RunFacts& run = settings.run;
  std::string out = "# ROME / C-ROME batch results\n\n";
  if (!run.model.empty())
    out += "- Model: `" + run.model + "`" + (run.architecture.empty() ? "" : " (" + run.architecture + ")") + "\n";
  if (!run.dataset.empty())
    out += "- Dataset: `" + run.dataset + "` (" + run.dataset_format +
           (run.dataset_records ? ", " + std::to_string(*run.dataset_records) + " records" : "") + ")\n";
  if (run.layer) out += "- Edited layer: " + std::to_string(*run.layer) + "\n";
  if (!run.template_source.empty())
    out += "- Context templates: " + run.template_source +
           (run.templates ? " (" + std::to_string(*run.templates) + ", the first \"{}\")" : "") + "\n";
  if (!run.tool_version.empty()) out += "- Tool: rome-collapse " + run.tool_version + "\n";
  if (!run.started_utc.empty()) out += "- Run started: " + run.started_utc + "\n";
  if (settings.collapse_cases)
    out += "- Collapse cases: the " + std::to_string(settings.collapse_cases->size()) + " case ids given in the config\n";
  else
    out += "- Collapse cases: mean perplexity after the edit above " + format(settings.collapse_ratio, "%g") +
           " × the unedited model's\n";
  // Six significant digits: the table's columns show four, and the grouped and one-by-one paths
  // (batch --one-by-one) differ beyond the sixth (float rounding).
  if (settings.perplexity_before)
    out += "- Perplexity of the unedited model: " + format(*settings.perplexity_before, "%.6g") + "\n";
  out += "\nEfficacy, Generalisation and Locality are the paper's token accuracies (EasyEdit), in percent, as is "
         "\"subject first\" (tables.csv uses the same units). ± is the half-width of the 95% confidence interval of the "
         "mean over cases (Student t). \"not taken\": edits that wrote nothing (efficacy 0, the target's NLL not "
         "lower) or whose v* optimisation diverged; \"loss rose\": edits whose v* loss ended above its initial value.\n\n";
  const std::vector<std::string> header = {"method", "cases", "n", "Efficacy", "Generalisation", "Locality", "ppl mean",
                                           "ppl median", "|den| median", "|den| min", "‖ΔW‖ median", "‖ΔW‖ max",
                                           "subject first", "not taken", "loss rose"};
  auto table_row = [](const std::vector<std::string>& cells) {
    std::string line = "|";
    for (const auto& cell : cells) line += " " + markdown_cell(cell) + " |";
    return line + "\n";
  };
  out += table_row(header);
  out += "|---|---|";  // method and group left-aligned, numbers right-aligned
  for (size_t i = 2; i < header.size(); ++i) out += "---:|";
  out += "\n";
  for (const auto& r : rows) {
    out += table_row({r.method, r.group, std::to_string(r.cases), with_ci(100 * r.efficacy, 100 * r.efficacy_ci95, "%.2f"),
                      with_ci(100 * r.generalisation, 100 * r.generalisation_ci95, "%.2f"),
                      with_ci(100 * r.locality, 100 * r.locality_ci95, "%.2f"), with_ci(r.ppl_mean, r.ppl_mean_ci95, "%.4g"),
                      format(r.ppl_median, "%.4g"), format(r.abs_denominator_median, "%.4g"),
                      format(r.abs_denominator_min, "%.4g"), format(r.update_norm_median, "%.4g"),
                      format(r.update_norm_max, "%.4g"), format(100 * r.subject_first_share, "%.0f"),
                      std::to_string(r.not_taken), std::to_string(r.loss_rose)});
  }
  return out;
}

std::string tables_csv(const std::vector<TableRow>& rows) {
  std::string out =
      "method,cases,n,efficacy_pct,efficacy_pct_ci95,generalisation_pct,generalisation_pct_ci95,locality_pct,"
      "locality_pct_ci95,ppl_mean,ppl_mean_ci95,ppl_median,abs_denominator_median,abs_denominator_min,"
      "update_norm_median,update_norm_max,subject_first_pct,not_taken,loss_rose\n";
  for (const auto& r : rows)
    out += r.method + "," + r.group + "," + std::to_string(r.cases) + "," + csv_number(100 * r.efficacy) + "," +
           csv_number(100 * r.efficacy_ci95) + "," + csv_number(100 * r.generalisation) + "," +
           csv_number(100 * r.generalisation_ci95) + "," + csv_number(100 * r.locality) + "," +
           csv_number(100 * r.locality_ci95) + "," + csv_number(r.ppl_mean) + "," + csv_number(r.ppl_mean_ci95) + "," +
           csv_number(r.ppl_median) + "," + csv_number(r.abs_denominator_median) + "," +
           csv_number(r.abs_denominator_min) + "," + csv_number(r.update_norm_median) + "," +
           csv_number(r.update_norm_max) + "," + csv_number(100 * r.subject_first_share) + "," +
           std::to_string(r.not_taken) + "," + std::to_string(r.loss_rose) + "\n";
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
                                  {"subject_first_share", number_or_null(r.subject_first_share)},
                                  {"efficacy_ci95", number_or_null(r.efficacy_ci95)},
                                  {"generalisation_ci95", number_or_null(r.generalisation_ci95)},
                                  {"locality_ci95", number_or_null(r.locality_ci95)},
                                  {"ppl_mean_ci95", number_or_null(r.ppl_mean_ci95)},
                                  {"not_taken", r.not_taken},
                                  {"loss_rose", r.loss_rose}};
  json collapse_rule = settings.collapse_cases
                           ? json{{"collapse_cases", std::vector<int64_t>(settings.collapse_cases->begin(),
                                                                          settings.collapse_cases->end())}}
                           : json{{"collapse_ratio", settings.collapse_ratio}};
  const RunFacts& run = settings.run;
  json facts = {{"model", run.model},
                {"architecture", run.architecture},
                {"dataset", run.dataset},
                {"dataset_format", run.dataset_format},
                {"layer", run.layer ? json(*run.layer) : json(nullptr)},
                {"template_source", run.template_source},
                {"tool_version", run.tool_version}};
  return {{"result_lines", result_lines},
          {"run", facts},
          {"units", "accuracies and subject_first_share as fractions (tables.md and tables.csv: percent); *_ci95: "
                    "half-width of the mean's 95% confidence interval (Student t)"},
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
