#include "rome_collapse/analysis/check.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "rome_collapse/experiment/edit_config.h"
#include "rome_collapse/io/npz.h"
#include "rome_collapse/rome/hparams_import.h"
#include "rome_collapse/rome/update.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/fields.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {
namespace {

nlohmann::json finite_or_null(double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(); }

}  // namespace

CollectedKeys collect_keys(const KeySource& source, const std::vector<KeyRow>& rows, int64_t layer,
                          int64_t position_offset, int64_t max_batch_tokens, ProgressReporter* progress) {
  CollectedKeys collected;
  std::vector<at::Tensor> keys, outputs;
  size_t begin = 0;
  while (begin < rows.size()) {
    // Greedy chunk: as many rows as fit the token budget at the chunk's padded length.
    size_t end = begin;
    int64_t longest = 0;
    while (end < rows.size()) {
      const int64_t length = std::max<int64_t>(longest, static_cast<int64_t>(rows[end].ids.size()));
      if (end > begin && length * static_cast<int64_t>(end - begin + 1) > max_batch_tokens) break;
      longest = length;
      ++end;
    }
    std::vector<std::vector<int64_t>> inputs;
    std::vector<TokenPosition> at;
    for (size_t r = begin; r < end; ++r) {
      if (rows[r].position < 0 || rows[r].position >= static_cast<int64_t>(rows[r].ids.size()))
        throw std::logic_error("collect_keys: position outside its row");
      inputs.push_back(source.model_input(rows[r].ids));
      at.push_back({static_cast<int64_t>(r - begin), rows[r].position});
    }
    auto [chunk_keys, chunk_outputs] = source.capture(inputs, at, layer, position_offset);
    keys.push_back(chunk_keys);
    outputs.push_back(chunk_outputs);
    ++collected.forward_passes;
    if (progress) progress->advance(static_cast<int64_t>(end - begin));
    begin = end;
  }
  if (keys.empty()) throw std::logic_error("collect_keys: no rows");
  collected.keys = at::cat(keys, 0);
  collected.outputs = at::cat(outputs, 0);
  return collected;
}

CollectedKeys collect_keys(const CausalLM& model, const std::vector<KeyRow>& rows, int64_t layer, int64_t pad_id,
                          int64_t position_offset, int64_t max_batch_tokens) {
  return collect_keys(*causal_key_source(model, pad_id), rows, layer, position_offset, max_batch_tokens);
}

std::vector<KeySet> compute_keys_batched(const KeySource& source, const Tokenizer& tokenizer, bool add_bos,
                                         const std::vector<EditRequest>& requests,
                                         const std::vector<std::string>& templates, int64_t layer,
                                         int64_t position_offset, int64_t max_batch_tokens, int64_t* forward_passes,
                                         ProgressReporter* progress) {
  // Rows exactly as compute_keys builds them, request after request.
  std::vector<KeyRow> rows;
  for (const EditRequest& request : requests)
    for (const std::string& context : templates) {
      const std::string with_placeholder = fill_placeholder(context, request.prompt);
      rows.push_back({tokenizer.encode(fill_placeholder(with_placeholder, request.subject), add_bos),
                      subject_last_index(tokenizer, add_bos, with_placeholder, request.subject)});
    }
  CollectedKeys collected = collect_keys(source, rows, layer, position_offset, max_batch_tokens, progress);
  if (forward_passes) *forward_passes = collected.forward_passes;
  std::vector<KeySet> sets;
  const int64_t n = static_cast<int64_t>(templates.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const int64_t first = static_cast<int64_t>(i) * n;
    sets.push_back(key_set_from_rows(collected.keys.slice(0, first, first + n), collected.outputs.slice(0, first, first + n)));
  }
  return sets;
}

std::vector<KeySet> compute_keys_batched(const CausalLM& model, const Tokenizer& tokenizer, bool add_bos,
                                         const std::vector<EditRequest>& requests,
                                         const std::vector<std::string>& templates, int64_t layer, int64_t pad_id,
                                         int64_t position_offset, int64_t max_batch_tokens, int64_t* forward_passes) {
  return compute_keys_batched(*causal_key_source(model, pad_id), tokenizer, add_bos, requests, templates, layer,
                              position_offset, max_batch_tokens, forward_passes);
}

KeyRunSetup read_key_run_setup(const std::filesystem::path& config_path, const std::string& requests_file) {
  const ConfigDocument document = read_config_document(config_path);
  const nlohmann::json& json = document.json;
  const std::filesystem::path& base = document.base_dir;
  KeyRunSetup setup;
  setup.config = parse_edit_config(document);
  if (!requests_file.empty()) {
    setup.requests = read_request_file(requests_file);
  } else if (json.contains("dataset") && !json.contains("request") && !json.contains("requests")) {
    // The batch command's "dataset": a request file, relative to the config.
    const auto& dataset = json["dataset"];
    std::string file;
    if (dataset.is_string()) file = dataset.get<std::string>();
    else if (dataset.is_object() && dataset.contains("path") && dataset["path"].is_string())
      file = dataset["path"].get<std::string>();
    else
      fail_input(config_path.string(), "dataset: expected a request file path (or pass --requests FILE)");
    std::filesystem::path path(file);
    setup.requests = read_request_file(path.is_absolute() ? path : (base / path).lexically_normal());
  } else {
    setup.requests = requests_from_config_json(json, config_path.string());
  }
  return setup;
}

KeyRunContext prepare_key_run(const LoadedModel& loaded, const EditConfig& config) {
  const int64_t layers = loaded.layers();
  const std::string what = loaded.seq2seq ? " encoder layers" : " layers";
  if (config.hparams.layer < 0 || config.hparams.layer >= layers)
    throw InputError(config.source + ": hparams.layer: " + std::to_string(config.hparams.layer) +
                     " is out of range for a model with " + std::to_string(layers) + what);
  // The paper samples its templates from the causal LM being edited; T5 has none to sample from, and
  // a comparison with a decoder is only fair with the same prefixes, so T5 takes them as a list.
  if (loaded.seq2seq && config.templates.generate)
    throw InputError(config.source + ": context_templates: generating templates needs a causal decoder; for T5 "
                     "give them as a list (e.g. the 21 fixed templates of configs/experiment5-t5-v1_0.json, the same ones "
                     "a decoder run can use)");
  if (loaded.model)  // module names a ROME / EasyEdit hparams file gives (causal LMs)
    check_module_names(*loaded.model, config.module_names, config.hparams.layer, config.source + ": hparams");
  KeyRunContext context;
  context.templates = resolve_templates(loaded, config.templates);
  if (config.hparams.mom2_adjustment) context.second_moment = read_second_moment_npz(config.hparams.stats);
  return context;
}

bool subject_first(const EditRequest& request) { return request.prompt.rfind("{}", 0) == 0; }

bool subject_first_token(const LoadedModel& loaded, const EditRequest& request) {
  const int64_t first_position = loaded.add_bos && loaded.tokenizer->bos_id() ? 1 : 0;
  return subject_last_index(*loaded.tokenizer, loaded.add_bos, request.prompt, request.subject) == first_position;
}

RequestIdentity identify_request(const LoadedModel& loaded, const RequestSet& requests, size_t index) {
  RequestIdentity identity;
  identity.request = requests.requests.at(index);
  identity.id = index < requests.ids.size() ? requests.ids[index] : nlohmann::json(index);
  identity.subject_first = subject_first(identity.request);
  identity.subject_last_index =
      subject_last_index(*loaded.tokenizer, loaded.add_bos, identity.request.prompt, identity.request.subject);
  identity.subject_first_token = subject_first_token(loaded, identity.request);
  return identity;
}

nlohmann::json identity_json(const RequestIdentity& identity, size_t index) {
  return {{"index", index},
          {"id", identity.id},
          {"request", to_json(identity.request)},
          {"subject_first", identity.subject_first},
          {"subject_first_token", identity.subject_first_token},
          {"subject_last_index", identity.subject_last_index}};
}

nlohmann::json key_run_provenance(const LoadedModel& loaded, const EditConfig& config, const RequestSet& requests) {
  nlohmann::json provenance = base_provenance(loaded, config);
  // Which module's input the keys are (a decoder's MLP down-projection, or T5's encoder wo).
  provenance["rewrite_weight"] = make_key_source(loaded)->rewrite_weight_name(config.hparams.layer);
  provenance["requests_source"] = requests.source;
  provenance["requests_format"] = to_string(requests.format);
  return provenance;
}

std::string table_label(const EditRequest& request) {
  std::string label = request.prompt + " (" + request.subject + ")";
  if (label.size() > 40) label = label.substr(0, 37) + "...";
  return label;
}

bool CheckReport::all_passed() const { return failed_count() == 0; }

int64_t CheckReport::failed_count() const {
  int64_t failed = 0;
  for (const auto& r : requests) failed += r.passed ? 0 : 1;
  return failed;
}

void apply_thresholds(RequestCheck& check, const CheckThresholds& thresholds) {
  check.failures.clear();
  char line[256];
  const double rome = std::abs(check.rome_denominator);
  if (!std::isfinite(check.rome_denominator)) {
    check.failures.push_back("ROME denominator is not finite");
  } else if (rome < thresholds.min_abs_denominator) {
    std::snprintf(line, sizeof line, "|ROME denominator| %.4g < %.4g", rome, thresholds.min_abs_denominator);
    check.failures.push_back(line);
  }
  // NaN (0/0) compares false and fails too: neither update is defined.
  if (!(check.ratio >= thresholds.min_ratio)) {
    std::snprintf(line, sizeof line, "|ROME| / |C-ROME| denominator %.4g < %.4g", check.ratio, thresholds.min_ratio);
    check.failures.push_back(line);
  }
  check.passed = check.failures.empty();
}

void check_subject_boundaries(const LoadedModel& loaded, const RequestSet& requests) {
  for (size_t i = 0; i < requests.requests.size(); ++i) {
    const EditRequest& request = requests.requests[i];
    const std::string id = i < requests.ids.size() ? requests.ids[i].dump() : std::to_string(i);
    check_subject_boundary(*loaded.tokenizer, loaded.add_bos, request.prompt, request.subject,
                           requests.source + ": request " + id);
  }
}

CheckReport run_check(const LoadedModel& loaded, const EditConfig& config, const RequestSet& requests,
                      const KeyRunContext& context, const CheckThresholds& thresholds, ProgressReporter* progress) {
  check_subject_boundaries(loaded, requests);
  const auto start = std::chrono::steady_clock::now();
  CheckReport report;
  report.thresholds = thresholds;
  report.templates = context.templates;
  std::vector<KeySet> key_sets =
      compute_keys_batched(*make_key_source(loaded), *loaded.tokenizer, loaded.add_bos, requests.requests,
                           context.templates, config.hparams.layer, 0, 8192, &report.forward_passes, progress);
  if (progress) progress->finish();
  const SecondMoment* moment = context.second_moment ? &*context.second_moment : nullptr;
  for (size_t i = 0; i < requests.requests.size(); ++i) {
    const at::Tensor k_bar = key_sets[i].prefixed_key_mean.to(at::kCPU).to(at::kDouble);
    const at::Tensor k_u = key_sets[i].unprefixed_key.to(at::kCPU).to(at::kDouble);
    // Computed in float64 from the float32 u that the edit uses, so check and edit agree.
    const at::Tensor u = left_vector(k_bar.to(at::kFloat), moment, config.hparams.mom2_ridge).to(at::kCPU).to(at::kDouble);
    RequestCheck check;
    static_cast<RequestIdentity&>(check) = identify_request(loaded, requests, i);
    check.rome_denominator = at::dot(k_u, u).item<double>();
    check.c_rome_denominator = at::dot(k_bar, u).item<double>();
    check.ratio = check.c_rome_denominator == 0
                      ? (check.rome_denominator == 0 ? std::nan("") : std::numeric_limits<double>::infinity())
                      : std::abs(check.rome_denominator) / std::abs(check.c_rome_denominator);
    check.cos_unprefixed_prefixed = at::cosine_similarity(k_u, k_bar, 0).item<double>();
    check.unprefixed_key_norm = k_u.norm().item<double>();
    check.prefixed_key_norm = k_bar.norm().item<double>();
    apply_thresholds(check, thresholds);
    report.requests.push_back(std::move(check));
  }
  report.key_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

nlohmann::json to_json(const CheckReport& report, const LoadedModel& loaded, const EditConfig& config,
                       const RequestSet& requests) {
  nlohmann::json rows = nlohmann::json::array();
  int64_t first_n = 0, first_failed = 0, later_n = 0, later_failed = 0;
  for (size_t i = 0; i < report.requests.size(); ++i) {
    const RequestCheck& r = report.requests[i];
    (r.subject_first ? first_n : later_n) += 1;
    if (!r.passed) (r.subject_first ? first_failed : later_failed) += 1;
    nlohmann::json row = identity_json(r, i);
    row.update({{"rome_denominator", finite_or_null(r.rome_denominator)},
                {"c_rome_denominator", finite_or_null(r.c_rome_denominator)},
                {"ratio", finite_or_null(r.ratio)},
                {"cos_unprefixed_prefixed", finite_or_null(r.cos_unprefixed_prefixed)},
                {"unprefixed_key_norm", r.unprefixed_key_norm},
                {"prefixed_key_norm", r.prefixed_key_norm},
                {"passed", r.passed},
                {"failures", r.failures}});
    rows.push_back(std::move(row));
  }
  nlohmann::json out;
  out["schema_version"] = 1;
  out["command"] = "check";
  out["thresholds"] = {{"min_abs_denominator", report.thresholds.min_abs_denominator},
                       {"min_ratio", report.thresholds.min_ratio}};
  out["passed"] = report.all_passed();
  out["summary"] = {{"requests", report.requests.size()},
                    {"failed", report.failed_count()},
                    {"subject_first", {{"requests", first_n}, {"failed", first_failed}}},
                    {"subject_later", {{"requests", later_n}, {"failed", later_failed}}},
                    {"skipped", requests.skipped.size()}};
  out["requests"] = rows;
  out["skipped_records"] = requests.skipped;  // records of the request file that cannot be edited
  out["context_templates"] = report.templates;
  out["timings_s"] = {{"keys_and_denominators", report.key_seconds}, {"forward_passes", report.forward_passes}};
  out["provenance"] = key_run_provenance(loaded, config, requests);
  return out;
}

std::string format_check_table(const CheckReport& report) {
  std::string text;
  char line[512];
  std::snprintf(line, sizeof line, "%4s  %-40s %5s %12s %12s %8s %8s  %s\n", "#", "request (subject)", "first",
                "ROME denom", "C-ROME denom", "ratio", "cos", "verdict");
  text += line;
  for (size_t i = 0; i < report.requests.size(); ++i) {
    const RequestCheck& r = report.requests[i];
    const std::string label = table_label(r.request);
    std::snprintf(line, sizeof line, "%4zu  %-40s %5s %12.4f %12.4f %8.3f %8.3f  %s\n", i, label.c_str(),
                  r.subject_first ? "yes" : "no", r.rome_denominator, r.c_rome_denominator, r.ratio,
                  r.cos_unprefixed_prefixed, r.passed ? "pass" : ("FAIL: " + r.failures.front()).c_str());
    text += line;
  }
  std::snprintf(line, sizeof line,
                "%lld of %zu requests pass (min |ROME denominator| %g, min |ROME|/|C-ROME| %g); keys in %.3f s, "
                "%lld forward pass(es)\n",
                static_cast<long long>(report.requests.size() - report.failed_count()), report.requests.size(),
                report.thresholds.min_abs_denominator, report.thresholds.min_ratio, report.key_seconds,
                static_cast<long long>(report.forward_passes));
  text += line;
  return text;
}

}  // namespace rc
