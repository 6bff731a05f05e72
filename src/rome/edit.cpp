#include "rome_collapse/rome/edit.h"

#include <ATen/ATen.h>

#include "rome_collapse/eval/edit_metrics.h"
#include "rome_collapse/eval/text_file.h"
#include "rome_collapse/model/device_memory.h"
#include "rome_collapse/rome/convergence.h"
#include "rome_collapse/rome/limits.h"
#include "rome_collapse/rome/npz.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/fields.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<double> to_vector(const at::Tensor& tensor) {
  at::Tensor flat = tensor.detach().to(at::kDouble).cpu().contiguous().reshape(-1);
  return std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
}

std::string resolve_path(const std::filesystem::path& base_dir, const std::string& value) {
  if (value.empty() || value.rfind("builtin:", 0) == 0) return value;
  std::filesystem::path path(value);
  return path.is_absolute() ? path.string() : (base_dir / path).lexically_normal().string();
}

const std::vector<std::string> kConfigKeys = {"model",   "tokenizer", "add_bos",        "device",       "dtype",
                                              "method",  "request",   "hparams",        "context_templates",
                                              "perplexity", "collapse_ratio", "dump_vectors", "prefix_index",
                                              "record_timings", "description"};

// Whether this machine and libtorch can run the config's device and dtype, with the file and the
// field named (load_model would say it too, but without the config).
void check_device_and_dtype(const std::string& device, const std::string& dtype, const std::string& source) {
  c10::Device parsed_device(c10::kCPU);
  try {
    parsed_device = parse_device(device);
  } catch (const InputError& e) {
    throw InputError(source + ": field \"device\": " + e.what());
  }
  try {
    check_dtype_supported(parse_dtype(dtype), parsed_device, dtype);
  } catch (const InputError& e) {
    throw InputError(source + ": field \"dtype\": " + e.what());
  }
}

}  // namespace

EditConfig parse_edit_config(const nlohmann::json& json, const std::string& source, const std::filesystem::path& base_dir,
                             const std::vector<std::string>& allowed_extra) {
  if (!json.is_object()) throw InputError(source + ": expected a JSON object");
  for (const auto& item : json.items()) {
    const std::string& key = item.key();
    if (std::find(kConfigKeys.begin(), kConfigKeys.end(), key) == kConfigKeys.end() &&
        std::find(allowed_extra.begin(), allowed_extra.end(), key) == allowed_extra.end())
      throw InputError(source + ": unknown field \"" + excerpt(key) + "\"");
  }
  EditConfig config;
  config.source = source;
  config.raw = json;
  auto string_field = [&](const char* key, std::string& out, bool required) {
    if (!json.contains(key)) {
      if (required) throw InputError(source + ": missing field \"" + std::string(key) + "\"");
      return;
    }
    if (!json[key].is_string()) throw InputError(source + ": field \"" + std::string(key) + "\": expected a string");
    out = json[key].get<std::string>();
  };
  string_field("model", config.model, true);
  config.model = resolve_path(base_dir, config.model);
  string_field("tokenizer", config.tokenizer, false);
  config.tokenizer = resolve_path(base_dir, config.tokenizer);
  if (json.contains("add_bos") && !json["add_bos"].is_null()) {
    if (!json["add_bos"].is_boolean()) throw InputError(source + ": field \"add_bos\": expected true, false or null");
    config.add_bos = json["add_bos"].get<bool>();
  }
  string_field("device", config.device, false);
  string_field("dtype", config.dtype, false);
  if (config.device != "cpu" && config.device != "cuda")
    throw InputError(source + ": field \"device\": expected \"cpu\" or \"cuda\"");
  check_device_and_dtype(config.device, config.dtype, source);
  std::string method = "rome";
  string_field("method", method, false);
  config.method = parse_method(method, source + ": field \"method\"");
  if (json.contains("request")) config.request = parse_request(json["request"], source + ": request");
  if (json.contains("hparams")) read_fields(config.hparams, json["hparams"], source + ": hparams");
  config.hparams.stats = resolve_path(base_dir, config.hparams.stats);
  check_hparams(config.hparams, source + ": hparams");
  if (config.hparams.mom2_adjustment && config.hparams.stats.empty())
    throw InputError(source + ": hparams.stats: mom2_adjustment is true but no statistics file is named");
  if (json.contains("context_templates"))
    config.templates = parse_template_spec(json["context_templates"], source + ": context_templates");
  else
    config.templates.generate = true;
  check_template_spec(config.templates, source + ": context_templates");
  if (json.contains("perplexity")) {
    const auto& ppl = json["perplexity"];
    if (!ppl.is_object() || !ppl.contains("texts") || !ppl["texts"].is_string())
      throw InputError(source + ": perplexity: expected {\"texts\": FILE, \"batch_size\": N}");
    for (const auto& item : ppl.items())
      if (item.key() != "texts" && item.key() != "batch_size")
        throw InputError(source + ": perplexity: unknown field \"" + excerpt(item.key()) + "\"");
    config.perplexity_texts = resolve_path(base_dir, ppl["texts"].get<std::string>());
    if (ppl.contains("batch_size")) {
      if (!ppl["batch_size"].is_number_integer() || ppl["batch_size"].get<int64_t>() < 1 ||
          ppl["batch_size"].get<int64_t>() > 4096)
        throw InputError(source + ": perplexity.batch_size: expected an integer in [1, 4096]");
      config.perplexity_batch_size = ppl["batch_size"].get<int64_t>();
    }
  }
  if (json.contains("collapse_ratio")) {
    if (!json["collapse_ratio"].is_number() || !(json["collapse_ratio"].get<double>() > 0))
      throw InputError(source + ": collapse_ratio: expected a positive number");
    config.collapse_ratio = json["collapse_ratio"].get<double>();
  }
  if (json.contains("dump_vectors")) {
    if (!json["dump_vectors"].is_boolean()) throw InputError(source + ": dump_vectors: expected true or false");
    config.dump_vectors = json["dump_vectors"].get<bool>();
  }
  if (json.contains("record_timings")) {
    if (!json["record_timings"].is_boolean()) throw InputError(source + ": record_timings: expected true or false");
    config.record_timings = json["record_timings"].get<bool>();
  }
  if (json.contains("prefix_index")) {
    if (!json["prefix_index"].is_number_integer() || json["prefix_index"].get<int64_t>() < 0)
      throw InputError(source + ": prefix_index: expected a non-negative integer");
    config.prefix_index = json["prefix_index"].get<int64_t>();
  }
  return config;
}

EditConfig read_edit_config(const std::filesystem::path& path, const std::vector<std::string>& allowed_extra) {
  const std::string text = read_file(path);
  const nlohmann::json json = parse_json(text, path.string(), "malformed JSON");
  std::filesystem::path base = path.parent_path();
  EditConfig config = parse_edit_config(json, path.string(), base.empty() ? "." : base, allowed_extra);
  const bool requests_elsewhere = json.contains("requests") || json.contains("dataset");
  if (!json.contains("request") && !requests_elsewhere) fail_input(path.string(), "missing field \"request\"");
  config.config_sha256 = sha256_hex(text);
  return config;
}

void check_edit_inputs(const LoadedModel& loaded, const EditConfig& config) {
  const auto& model_config = loaded.model->config();
  const auto& hp = config.hparams;
  if (hp.layer < 0 || hp.layer >= model_config.n_layers)
    throw InputError(config.source + ": hparams.layer: " + std::to_string(hp.layer) + " is out of range for a model with " +
                     std::to_string(model_config.n_layers) + " layers");
  if (hp.v_loss_layer < hp.layer || hp.v_loss_layer >= model_config.n_layers)
    throw InputError(config.source + ": hparams.v_loss_layer: " + std::to_string(hp.v_loss_layer) +
                     " must be in [layer, " + std::to_string(model_config.n_layers - 1) + "]");
}

nlohmann::json tokenizer_files_provenance(const Tokenizer& tokenizer) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& file : tokenizer.source_files())
    files.push_back({{"path", std::filesystem::absolute(file).lexically_normal().string()}, {"sha256", sha256_file(file)}});
  return files;
}

nlohmann::json base_provenance(const LoadedModel& loaded, const EditConfig& config) {
  return {{"tool", "rome-collapse"},
          {"version", ROME_COLLAPSE_VERSION},
          {"config", config.source},
          {"config_sha256", config.config_sha256},
          {"model", loaded.model_path},
          {"architecture", loaded.architecture()},
          {"tokenizer", loaded.tokenizer_path},
          {"tokenizer_files", tokenizer_files_provenance(*loaded.tokenizer)},
          {"add_bos", loaded.add_bos},
          {"device", config.device},
          {"dtype", config.dtype},
          {"hparams", fields_to_json(config.hparams)},
          {"template_source", config.templates.generate ? "generated" : "fixed"},
          {"template_seed", config.templates.generate ? nlohmann::json(config.templates.generation.seed)
                                                     : nlohmann::json(nullptr)}};
}

std::string test_time_prefix(const std::vector<std::string>& templates, int64_t index) {
  if (templates.size() < 2) return "{}";
  return templates[1 + index % static_cast<int64_t>(templates.size() - 1)];
}

EditContext prepare_edit_context(const LoadedModel& loaded, const EditConfig& config) {
  EditContext context;
  context.templates = resolve_templates(loaded, config.templates);
  if (!config.perplexity_texts.empty()) {
    try {
      context.perplexity_ids = perplexity_token_ids(*loaded.tokenizer, read_texts(config.perplexity_texts),
                                                    loaded.model->config().max_positions);
    } catch (const InputError& e) {
      const std::string what = e.what();
      throw InputError(what.rfind(config.perplexity_texts, 0) == 0 ? what : config.perplexity_texts + ": " + what);
    }
    context.perplexity_before = perplexity(*loaded.model, context.perplexity_ids, config.perplexity_batch_size);
  }
  if (config.hparams.mom2_adjustment) context.second_moment = read_second_moment_npz(config.hparams.stats);
  return context;
}

EditOutcome run_edit(LoadedModel& loaded, const EditConfig& config, const EditRequest& request, EditMethod method,
                     const EditContext& context, const EditOptions& options) {
  check_edit_inputs(loaded, config);
  const CausalLM& model = *loaded.model;
  const Tokenizer& tokenizer = *loaded.tokenizer;
  const RomeHparams& hp = config.hparams;
  std::map<std::string, double> timings, peak_mib;
  EditOutcome outcome;
  // Per phase: seconds (after the device's queued work has run) and peak memory on that device.
  Clock::time_point start;
  auto begin_phase = [&] {
    if (config.record_timings) reset_peak_memory(model.device());
    start = Clock::now();
  };
  auto end_phase = [&](const char* phase) {
    if (!config.record_timings) return;
    synchronize(model.device());
    timings[phase] = seconds_since(start);
    peak_mib[phase] = peak_memory_mib(model.device());
  };

  // Keys and the optimisation batch share one forward pass up to layer L.
  begin_phase();
  ValueBatch batch = build_value_batch(tokenizer, loaded.add_bos, request, context.templates, hp.kl_prompt,
                                       loaded.pad_id(), model.device());
  if (batch.ids.size(1) > model.config().max_positions)
    throw InputError(config.source + ": request: a rewriting prompt has " + std::to_string(batch.ids.size(1)) +
                     " tokens, more than the model's context of " + std::to_string(model.config().max_positions));
  LayerCapture capture =
      capture_rewrite_layer(model, batch, hp.layer, /*record_cache=*/options.path == ForwardPath::Optimized);
  const int64_t templates_n = batch.rewriting_rows;
  outcome.keys = batch.keys_match_template_encoding
                     ? key_set_from_rows(capture.keys.slice(0, 0, templates_n), capture.outputs.slice(0, 0, templates_n))
                     : compute_keys(model, tokenizer, loaded.add_bos, request, context.templates, hp.layer, loaded.pad_id());
  end_phase("keys");

  begin_phase();
  const SecondMoment* moment = context.second_moment ? &*context.second_moment : nullptr;
  at::Tensor left = left_vector(outcome.keys.prefixed_key_mean, moment, hp.mom2_ridge);
  end_phase("left_vector");

  begin_phase();
  outcome.value = optimize_value(model, batch, capture, hp, options.path);
  end_phase("value_optimisation");

  begin_phase();
  outcome.update = rank_one_update(method, outcome.keys, left, outcome.value.v_star);
  at::Tensor original_weight = model.rewrite_weight(hp.layer);
  at::Tensor delta_weight = outcome.update.delta_weight().to(original_weight.scalar_type());  // [D, F]
  const double weight_norm = original_weight.to(at::kDouble).norm().item<double>();
  end_phase("update");

  outcome.subject_last_index = subject_last_index(tokenizer, loaded.add_bos, request.prompt, request.subject);
  const int64_t first_position = loaded.add_bos && tokenizer.bos_id() ? 1 : 0;
  outcome.subject_first_token = outcome.subject_last_index == first_position;
  // The paper's "subject first": the prompt starts with the subject (its first token is the
  // prompt's first token), whatever the subject's length.
  outcome.subject_first = request.prompt.rfind("{}", 0) == 0;

  nlohmann::json result;
  result["schema_version"] = kResultSchemaVersion;
  result["method"] = to_string(method);
  result["request"] = to_json(request);
  result["layer"] = hp.layer;
  result["subject_last_index"] = outcome.subject_last_index;
  result["subject_first_token"] = outcome.subject_first_token;
  result["subject_first"] = outcome.subject_first;
  const auto& u = outcome.update;
  result["denominator"] = u.denominator;
  result["abs_denominator"] = std::abs(u.denominator);
  result["numerator_norm"] = u.numerator_norm;
  result["update_norm"] = u.update_norm;
  result["relative_update_norm"] = u.update_norm / weight_norm;
  result["right_vector_norm"] = u.right.norm().item<double>();
  const auto& keys = outcome.keys;
  result["cos_unprefixed_prefixed"] =
      at::cosine_similarity(keys.unprefixed_key.to(at::kDouble), keys.prefixed_key_mean.to(at::kDouble), 0).item<double>();
  result["unprefixed_key_norm"] = keys.unprefixed_key.to(at::kDouble).norm().item<double>();
  result["prefixed_key_norm"] = keys.prefixed_key_mean.to(at::kDouble).norm().item<double>();
  result["optimisation"] = {{"iterations", outcome.value.iterations},
                            {"adam_steps", outcome.value.adam_steps},
                            {"loss", outcome.value.loss},
                            {"nll", outcome.value.nll},
                            {"kl", outcome.value.kl},
                            {"weight_decay", outcome.value.weight_decay}};

  // Metrics with ΔW applied; W is restored afterwards (bit for bit: the original tensor is put back).
  begin_phase();
  const std::string bare_prompt = fill_placeholder(request.prompt, request.subject);
  std::string efficacy_prompt = bare_prompt;
  if (method == EditMethod::CRomePrefix)
    efficacy_prompt = fill_placeholder(test_time_prefix(context.templates, config.prefix_index), bare_prompt);
  std::optional<double> target_nll_before, target_nll_after, efficacy;  // for the convergence verdict
  if (options.evaluate)
    target_nll_before = -score_target(model, tokenizer, loaded.add_bos, efficacy_prompt, request.target_new).mean_logprob;
  loaded.model->set_rewrite_weight(hp.layer, original_weight + delta_weight);
  try {
    if (options.evaluate) {
      if (context.perplexity_before) {
        PerplexitySummary after = perplexity(model, context.perplexity_ids, config.perplexity_batch_size);
        result["perplexity_before"] = to_json(*context.perplexity_before, false);
        result["perplexity_after"] = to_json(after, false);
        result["collapse"] = after.mean > config.collapse_ratio * context.perplexity_before->mean;
      } else {
        result["perplexity_before"] = nullptr;
        result["perplexity_after"] = nullptr;
        result["collapse"] = nullptr;
      }
      TargetScore new_score = score_target(model, tokenizer, loaded.add_bos, bare_prompt, request.target_new);
      result["logprob_target_new_after"] = new_score.mean_logprob;
      result["logprob_target_true_after"] =
          request.target_true.empty()
              ? nlohmann::json(nullptr)
              : nlohmann::json(score_target(model, tokenizer, loaded.add_bos, bare_prompt, request.target_true).mean_logprob);
      const TargetScore efficacy_score = score_target(model, tokenizer, loaded.add_bos, efficacy_prompt, request.target_new);
      result["efficacy"] = efficacy_score.token_accuracy;
      result["efficacy_prompt"] = efficacy_prompt;
      efficacy = efficacy_score.token_accuracy;
      target_nll_after = -efficacy_score.mean_logprob;
    }
  } catch (...) {
    loaded.model->set_rewrite_weight(hp.layer, original_weight);
    throw;
  }
  if (!options.keep_update) loaded.model->set_rewrite_weight(hp.layer, original_weight);
  end_phase("evaluation");
  result["convergence"] = to_json(assess_convergence(outcome.value, efficacy, target_nll_before, target_nll_after));

  result["context_templates"] = context.templates;
  if (config.record_timings) {
    result["timings_s"] = timings;
    result["peak_memory_mib"] = peak_mib;  // per phase, on the model's device
  }
  if (config.dump_vectors) {
    result["vectors"] = {{"prefixed_key_mean", to_vector(keys.prefixed_key_mean)},
                         {"unprefixed_key", to_vector(keys.unprefixed_key)},
                         {"left_vector", to_vector(u.left)},
                         {"right_vector", to_vector(u.right)},
                         {"v_star", to_vector(outcome.value.v_star)},
                         {"unprefixed_output", to_vector(keys.unprefixed_output)},
                         {"prefixed_output_mean", to_vector(keys.prefixed_output_mean)}};
  }
  nlohmann::json covariance = nullptr;
  if (moment)
    covariance = {{"file", moment->source}, {"sha256", moment->sha256}, {"count", moment->count},
                  {"ridge", hp.mom2_ridge}};
  nlohmann::json provenance = base_provenance(loaded, config);
  provenance["prefix_index"] = config.prefix_index;
  provenance["covariance"] = covariance;
  provenance["forward_path"] = options.path == ForwardPath::Optimized ? "optimized" : "reference";
  result["provenance"] = std::move(provenance);
  outcome.result = std::move(result);
  return outcome;
}

}  // namespace rc
