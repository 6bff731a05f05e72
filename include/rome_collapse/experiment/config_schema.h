#pragma once
// The config file's top-level fields: one schema that edit, check, keys and batch all read, so
// one file can be pre-checked (check), analysed (keys), tried (edit) and run (batch). A field a
// command does not use is accepted and ignored; an unknown field is refused (all of them in one
// message, each with the closest known name). Field list, defaults and help live here once; the
// help text starts with the commands that use the field. The objects nested in it (dataset,
// evaluation, perplexity, a cases range) are declared the same way below, and
// check_config_fields reports the unknown fields of every level together.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace rc {

struct ConfigFile {
  std::string description;
  std::string model;
  std::string tokenizer;
  std::optional<bool> add_bos;
  std::string device = "cpu";
  std::string dtype = "float32";
  std::string method = "rome";
  nlohmann::json methods;
  nlohmann::json request;
  nlohmann::json requests;
  nlohmann::json hparams;
  nlohmann::json context_templates;
  nlohmann::json perplexity;
  double collapse_ratio = 10.0;
  bool dump_vectors = false;
  int64_t prefix_index = 0;
  bool record_timings = true;
  nlohmann::json dataset;
  nlohmann::json cases;
  nlohmann::json collapse_cases;
  bool sequential = false;
  int64_t group_size = 8;
  nlohmann::json evaluation;
  nlohmann::json perplexity_selection;

  template <class Visit>
  void visit_fields(Visit&& visit) {
    visit("description", description, "[all] free text, ignored");
    visit("model", model,
          "[all] model directory, llama2.c .bin, builtin:demo-gpt2, hub-cache folder models--org--name/ or a "
          "Hugging Face name in the local cache (else hparams.model_name)");
    visit("tokenizer", tokenizer, "[all] tokenizer directory or file (default: the model's directory)");
    visit("add_bos", add_bos, "[all] true/false; null: the tokenizer's convention");
    visit("device", device, "[all] cpu or cuda");
    visit("dtype", dtype, "[all] compute dtype: float32, float64, bfloat16, float16");
    visit("method", method, "[edit, batch] rome, c-rome or c-rome-prefix");
    visit("methods", methods, "[edit, batch] a list of methods instead of method");
    visit("request", request,
          "[edit, check, keys] {\"prompt\": \"{} is a citizen of\", \"subject\", \"target_new\", \"target_true\"}");
    visit("requests", requests, "[edit, check, keys] a list of requests (plain, CounterFact, EasyEdit or ZsRE records)");
    visit("hparams", hparams,
          "[all] native fields, ROME's hparams JSON or EasyEdit's ROME YAML fields, inline or a file name");
    visit("context_templates", context_templates,
          "[all] a list starting with \"{}\", or {\"generate\": {seed_words, lengths, top_k, seed}} (default: generate)");
    visit("perplexity", perplexity, "[edit, batch] {\"texts\": FILE, \"batch_size\": 10}");
    visit("collapse_ratio", collapse_ratio, "[edit, batch] collapse: perplexity after > ratio x before");
    visit("dump_vectors", dump_vectors, "[edit] include keys, u, v and v* in the result");
    visit("prefix_index", prefix_index, "[edit, batch] c-rome-prefix: efficacy prompt gets template 1 + index % (n-1)");
    visit("record_timings", record_timings, "[edit, batch] per-phase times and peak memory in the result");
    visit("dataset", dataset, "[batch; check, keys, edit --case-id] {\"path\": FILE, \"format\": \"auto\"}");
    visit("cases", cases, "[batch] null (all), [case ids] or {\"start\", \"stop\"}");
    visit("collapse_cases", collapse_cases, "[batch] case ids whose edits also get the collapse measurements");
    visit("sequential", sequential, "[batch] accumulate the edits instead of starting each from the original");
    visit("group_size", group_size,
          "[batch] independent requests whose keys and v* are computed together, one pass per step (default 8)");
    visit("evaluation", evaluation, "[batch] {\"max_length\": N}: generation length of the evaluation");
    visit("perplexity_selection", perplexity_selection, "[batch] which perplexity texts to use");
  }
};

// "dataset": {...} (batch; check, keys and edit --case-id read its path).
struct DatasetField {
  std::string path;
  std::string format = "auto";

  template <class Visit>
  void visit_fields(Visit&& visit) {
    visit("path", path, "request / dataset file, relative to the config");
    visit("format", format, "auto, counterfact-rome, easyedit or zsre-rome");
  }
};

// "evaluation": {...} (batch).
struct EvaluationField {
  std::optional<int64_t> max_length;

  template <class Visit>
  void visit_fields(Visit&& visit) {
    visit("max_length", max_length, "EasyEdit's generation length of the evaluation (default 40)");
  }
};

// "perplexity": {...} (edit, batch).
struct PerplexityField {
  std::string texts;
  int64_t batch_size = 10;

  template <class Visit>
  void visit_fields(Visit&& visit) {
    visit("texts", texts, "text file of the perplexity (ME-PPL JSON, JSONL \"text\", or plain lines)");
    visit("batch_size", batch_size, "texts per forward pass, 1 to 4096");
  }
};

// "cases": {"start", "stop"} (batch): dataset positions, stop exclusive.
struct CaseRangeField {
  std::optional<int64_t> start, stop;

  template <class Visit>
  void visit_fields(Visit&& visit) {
    visit("start", start, "first position (default 0)");
    visit("stop", stop, "position after the last (default: the dataset's end)");
  }
};

// Every unknown field of a config, top level and nested objects, in one InputError ("c.json:
// unknown field \"modle\" (did you mean \"model\"?); dataset: unknown field ..."); a ROME /
// EasyEdit hparams file given as the config gets a hint to pass it as hparams instead.
void check_config_fields(const nlohmann::json& config, const std::string& source);

}  // namespace rc
