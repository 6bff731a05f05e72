// `rome-collapse edit`: one edit, or the requests x methods of a small comparison (the demo).
#include <cstdio>
#include <iostream>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "rome_collapse/model/safetensors.h"
#include "rome_collapse/rome/edit.h"
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

}  // namespace

int run_edit_command(const EditArgs& args) {
  EditConfig config = read_edit_config(args.config, {"methods", "requests"});
  const nlohmann::json& raw = config.raw;
  std::vector<EditRequest> requests;
  if (raw.contains("requests")) {
    if (raw.contains("request")) throw InputError(config.source + ": give either \"request\" or \"requests\"");
    if (!raw["requests"].is_array() || raw["requests"].empty())
      throw InputError(config.source + ": requests: expected a non-empty list");
    for (size_t i = 0; i < raw["requests"].size(); ++i)
      requests.push_back(parse_request(raw["requests"][i], config.source + ": requests[" + std::to_string(i) + "]"));
  } else {
    requests.push_back(config.request);
  }
  std::vector<EditMethod> methods;
  if (raw.contains("methods")) {
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
    throw InputError("--save-delta and --save-model need a config with one request and one method");

  LoadedModel loaded = load_model(config.model, config.tokenizer, config.add_bos, config.device, config.dtype);
  check_edit_inputs(loaded, config);
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
    if (!std::filesystem::is_directory(config.model))
      throw InputError(config.model + ": --save-model needs a Hugging Face model directory as the source");
    std::filesystem::create_directories(args.save_model);
    write_safetensors(std::filesystem::path(args.save_model) / "model.safetensors", loaded.model->hf_state_dict(),
                      {{"format", "pt"}, {"edited_by", "rome-collapse " ROME_COLLAPSE_VERSION}});
    for (const char* file : {"config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer.json",
                             "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}) {
      const auto source = std::filesystem::path(config.model) / file;
      if (std::filesystem::exists(source))
        write_file_atomic(std::filesystem::path(args.save_model) / file, read_file(source));
    }
  }
  nlohmann::json output = single ? results[0] : nlohmann::json{{"schema_version", kResultSchemaVersion}, {"results", results}};
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
