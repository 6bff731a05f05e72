// `rome-collapse edit`: one edit, or the requests x methods of a small comparison (the demo).
#include <algorithm>
#include <cstdio>
#include <iostream>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "rome_collapse/experiment/edit_config.h"
#include "rome_collapse/io/request_file.h"
#include "rome_collapse/io/safetensors.h"
#include "rome_collapse/rome/edit.h"
#include "rome_collapse/rome/subject_boundary.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc::cli {
namespace {

void print_comparison(std::ostream& out, const std::vector<nlohmann::json>& results) {
  char line[512];
  std::snprintf(line, sizeof line, "%-34s %-14s %6s %12s %10s %12s %12s %8s %9s %5s\n", "request (subject)", "method",
                "first", "denominator", "||dW||", "ppl before", "ppl after", "efficacy", "collapse", "took");
  out << line;
  for (const auto& r : results) {
    std::string request = r["request"]["prompt"].get<std::string>() + " (" + r["request"]["subject"].get<std::string>() + ")";
    if (request.size() > 34) request = request.substr(0, 31) + "...";
    auto number = [](const nlohmann::json& v) { return v.is_number() ? v.get<double>() : std::nan(""); };
    const auto& before = r.value("perplexity_before", nlohmann::json());
    const auto& after = r.value("perplexity_after", nlohmann::json());
    const auto& convergence = r.value("convergence", nlohmann::json());
    const char* took = convergence.is_object() ? (convergence["took"].get<bool>() ? "yes" : "NO") : "-";
    std::snprintf(line, sizeof line, "%-34s %-14s %6s %12.4f %10.4f %12.2f %12.2f %8.2f %9s %5s\n", request.c_str(),
                  r["method"].get<std::string>().c_str(), r["subject_first"].get<bool>() ? "yes" : "no",
                  r["denominator"].get<double>(), r["update_norm"].get<double>(),
                  before.is_object() ? number(before["mean"]) : std::nan(""),
                  after.is_object() ? number(after["mean"]) : std::nan(""), number(r.value("efficacy", nlohmann::json())),
                  r.value("collapse", nlohmann::json()).is_boolean() ? (r["collapse"].get<bool>() ? "YES" : "no") : "-",
                  took);
    out << line;
  }
}


// The config file (or an empty one) with the command line's settings written over it.
ConfigDocument edit_document(const EditArgs& args) {
  ConfigDocument doc = args.config.empty() ? ConfigDocument{} : read_config_document(args.config);
  nlohmann::json& json = doc.json;
  if (!json.is_object()) throw InputError(doc.source + ": expected an object of config fields");
  // Paths on the command line are relative to the working directory, not to the config.
  auto flag_path = [](const std::string& value) {
    std::error_code error;
    return std::filesystem::exists(value, error) ? std::filesystem::absolute(value).lexically_normal().string() : value;
  };
  if (!args.model.empty()) json["model"] = flag_path(args.model);
  if (!args.tokenizer.empty()) json["tokenizer"] = flag_path(args.tokenizer);
  if (args.add_bos) json["add_bos"] = *args.add_bos;
  if (!args.device.empty()) json["device"] = args.device;
  if (!args.dtype.empty()) json["dtype"] = args.dtype;
  if (!args.hparams.empty()) json["hparams"] = std::filesystem::absolute(args.hparams).lexically_normal().string();
  std::vector<std::string> methods;
  for (const std::string& item : args.methods)
    for (size_t start = 0; start <= item.size();) {
      const size_t comma = std::min(item.find(',', start), item.size());
      if (comma > start) methods.push_back(item.substr(start, comma - start));
      start = comma + 1;
    }
  if (methods.size() == 1) {
    json["method"] = methods[0];
    json.erase("methods");
  } else if (methods.size() > 1) {
    json["methods"] = methods;
    json.erase("method");
  }
  const bool inline_request = !args.prompt.empty() || !args.subject.empty() || !args.target_new.empty() ||
                              !args.target_true.empty();
  if (inline_request) {
    if (args.prompt.empty() || args.subject.empty() || args.target_new.empty())
      throw InputError("an inline request needs --prompt, --subject and --target-new (--target-true is optional)");
    if (!args.case_ids.empty()) throw InputError("give either an inline request or --case-id, not both");
    json["request"] = {{"prompt", args.prompt}, {"subject", args.subject}, {"target_new", args.target_new}};
    if (!args.target_true.empty()) json["request"]["target_true"] = args.target_true;
    json.erase("requests");
  }
  return doc;
}

// --case-id N picks records of --dataset FILE (else of the config's "dataset"); without it the
// config's "request"/"requests" (already set from inline flags by edit_document).
std::vector<EditRequest> edit_requests(const EditArgs& args, const ConfigDocument& doc, const EditConfig& config) {
  const nlohmann::json& json = doc.json;
  if (!args.dataset.empty() && args.case_ids.empty())
    throw InputError("--dataset " + args.dataset + ": give --case-id N (repeatable) to pick its records");
  if (!args.case_ids.empty()) {
    std::filesystem::path file = args.dataset;
    if (file.empty()) {
      const nlohmann::json& dataset = json.value("dataset", nlohmann::json());
      if (dataset.is_string()) file = doc.base_dir / dataset.get<std::string>();
      else if (dataset.is_object() && dataset.contains("path") && dataset["path"].is_string())
        file = doc.base_dir / dataset["path"].get<std::string>();
      else
        throw InputError("--case-id needs --dataset FILE (or \"dataset\" in the config)");
    }
    const RequestSet set = read_request_file(file);
    std::vector<EditRequest> chosen;
    for (int64_t id : args.case_ids) {
      const auto at = std::find(set.ids.begin(), set.ids.end(), nlohmann::json(id));
      if (at == set.ids.end())
        throw InputError(set.source + ": no record with case id " + std::to_string(id) + " (" +
                         std::to_string(set.ids.size()) + " records, " + to_string(set.format) +
                         " layout; records without case_id are numbered from 0)");
      chosen.push_back(set.requests[static_cast<size_t>(at - set.ids.begin())]);
    }
    return chosen;
  }
  if (json.contains("request") || json.contains("requests")) return requests_from_config_json(json, config.source).requests;
  throw InputError(config.source + ": no request: give --prompt/--subject/--target-new, --dataset FILE --case-id N, "
                   "or \"request\" / \"requests\" in the config");
}

// Imported hparams fields that were accepted but do not change the edit, said once on stderr.
void note_unused_hparams(const EditConfig& config) {
  if (!config.hparams_source.is_object() || config.hparams_source["unused"].empty()) return;
  std::cerr << "note: hparams fields accepted but not used:";
  for (const auto& item : config.hparams_source["unused"].items())
    std::cerr << " " << item.key() << " (" << item.value().get<std::string>() << ");";
  std::cerr << "\n";
}

}  // namespace

int run_edit_command(const EditArgs& args) {
  const ConfigDocument document = edit_document(args);
  ConfigOverrides overrides;
  if (args.layer >= 0) overrides.layer = args.layer;
  EditConfig config = parse_edit_config(document, overrides);
  const std::vector<EditRequest> requests = edit_requests(args, document, config);
  std::vector<EditMethod> methods;
  const nlohmann::json& raw = document.json;
  if (raw.contains("methods") && !raw["methods"].is_null()) {
    if (raw.contains("method")) throw InputError(config.source + ": give either \"method\" or \"methods\"");
    if (!raw["methods"].is_array() || raw["methods"].empty())
      throw InputError(config.source + ": methods: expected a non-empty list");
    for (const auto& m : raw["methods"]) {
      if (!m.is_string()) throw InputError(config.source + ": methods: expected strings");
      methods.push_back(parse_method(m.get<std::string>(), config.source + ": methods"));
    }
  } else {
    methods.push_back(config.method);
  }
  const bool single = requests.size() == 1 && methods.size() == 1;
  if (!single && (!args.save_delta.empty() || !args.save_model.empty()))
    throw InputError("--save-delta and --save-model need one request and one method");
  note_unused_hparams(config);

  LoadedModel loaded = load_config_model(config);
  fit_to_model(config, loaded);
  check_edit_inputs(loaded, config);
  // Every request before the first edit: inside a word is refused, merged with punctuation warned.
  for (const std::string& warning : subject_boundary_warnings(*loaded.tokenizer, loaded.add_bos, requests, {}, config.source))
    std::cerr << "warning: " << warning << "\n";
  EditContext context = prepare_edit_context(loaded, config);
  EditOptions options;
  options.path = args.reference_path ? ForwardPath::Reference : ForwardPath::Optimized;
  options.keep_update = !args.save_model.empty();

  std::vector<nlohmann::json> results;
  std::optional<EditOutcome> last;
  for (const auto& request : requests)
    for (EditMethod method : methods) {
      std::cerr << "editing \"" << fill_placeholder(request.prompt, request.subject) << "\" -> " << request.target_new
                << " with " << to_string(method) << "\n";
      last = run_edit(loaded, config, request, method, context, options);
      // A failed edit must not pass for a result: say so where the user looks.
      for (const auto& warning : last->result["convergence"]["warnings"])
        std::cerr << "warning: " << to_string(method) << " edit of \"" << fill_placeholder(request.prompt, request.subject)
                  << "\" -> " << request.target_new << ": " << warning.get<std::string>() << "\n";
      results.push_back(last->result);
    }

  // Outputs are written only after every edit succeeded, each atomically.
  if (!args.save_delta.empty())
    write_safetensors(args.save_delta, {{"left_vector", last->update.left.cpu()}, {"right_vector", last->update.right.cpu()}},
                      {{"layer", std::to_string(config.hparams.layer)},
                       {"rewrite_weight", loaded.model->rewrite_weight_name(config.hparams.layer)},
                       {"method", to_string(methods[0])}});
  if (!args.save_model.empty()) {
    if (!std::filesystem::is_directory(loaded.model_path))
      throw InputError(loaded.model_path + ": --save-model needs a Hugging Face model directory as the source");
    std::filesystem::create_directories(args.save_model);
    write_safetensors(std::filesystem::path(args.save_model) / "model.safetensors", loaded.model->hf_state_dict(),
                      {{"format", "pt"}, {"edited_by", "rome-collapse " ROME_COLLAPSE_VERSION}});
    for (const char* file : {"config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer.json",
                             "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}) {
      const auto source = std::filesystem::path(loaded.model_path) / file;
      if (std::filesystem::exists(source))
        write_file_atomic(std::filesystem::path(args.save_model) / file, read_file(source));
    }
  }
  // One shape whatever the number of edits (README "Result").
  const nlohmann::json output = {{"schema_version", kResultSchemaVersion}, {"results", results}};
  if (args.out.empty()) {
    std::cout << json_text(output) << "\n";
    print_comparison(std::cerr, results);
  } else {
    write_file_atomic(args.out, json_text(output) + "\n");
    print_comparison(std::cout, results);
    std::cout << "result written to " << args.out << "\n";
  }
  return kOk;
}

}  // namespace rc::cli
