#include "rome_collapse/rome/edit.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "rome_collapse/eval/edit_metrics.h"
#include "rome_collapse/io/npz.h"
#include "rome_collapse/io/text_file.h"
#include "rome_collapse/model/device_memory.h"
#include "rome_collapse/rome/convergence.h"
#include "rome_collapse/rome/hparams_import.h"
#include "rome_collapse/rome/limits.h"
#include "rome_collapse/rome/value_group.h"
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

// Per phase: seconds (after the device's queued work has run) and peak memory on that device.
class PhaseClock {
 public:
  PhaseClock(c10::Device device, bool enabled) : device_(device), enabled_(enabled) {}
  void begin() {
    if (enabled_) reset_peak_memory(device_);
    start_ = Clock::now();
  }
  void end(const char* phase) {
    if (!enabled_) return;
    synchronize(device_);
    seconds[phase] = seconds_since(start_);
    peak_mib[phase] = peak_memory_mib(device_);
  }
  std::map<std::string, double> seconds, peak_mib;

 private:
  c10::Device device_;
  bool enabled_;
  Clock::time_point start_;
};

// Templates: the context templates applied to the prompt (+ the target's first tokens), and the KL
// prompt, as one batch for the keys and v*.
ValueBatch templated_prompts(const LoadedModel& loaded, const EditConfig& config, const EditRequest& request,
                             const EditContext& context) {
  const CausalLM& model = *loaded.model;
  ValueBatch batch = build_value_batch(*loaded.tokenizer, loaded.add_bos, request, context.templates,
                                       config.hparams.kl_prompt, loaded.pad_id(), model.device());
  if (batch.ids.size(1) > model.config().max_positions)
    throw InputError(config.source + ": request: a rewriting prompt has " + std::to_string(batch.ids.size(1)) +
                     " tokens, more than the model's context of " + std::to_string(model.config().max_positions));
  return batch;
}

// Keys k̄ and kᵘ: from the pass the batch shares with v* when its tokens up to the subject are the
// templates' own, else from a pass over the templates alone.
KeySet edit_keys(const LoadedModel& loaded, const EditRequest& request, const EditContext& context,
                 const ValueBatch& batch, const RewriteLayerInput& layer_input, int64_t layer) {
  const int64_t templates_n = batch.rewriting_rows;
  if (batch.keys_match_template_encoding)
    return key_set_from_rows(layer_input.keys.slice(0, 0, templates_n), layer_input.outputs.slice(0, 0, templates_n));
  return compute_keys(*loaded.model, *loaded.tokenizer, loaded.add_bos, request, context.templates, layer,
                      loaded.pad_id());
}

// Where the subject sits in the bare prompt (the paper's collapse cases are "subject first").
void locate_subject(const LoadedModel& loaded, const EditRequest& request, EditOutcome& outcome) {
  const Tokenizer& tokenizer = *loaded.tokenizer;
  outcome.subject_last_index = subject_last_index(tokenizer, loaded.add_bos, request.prompt, request.subject);
  const int64_t first_position = loaded.add_bos && tokenizer.bos_id() ? 1 : 0;
  outcome.subject_first_token = outcome.subject_last_index == first_position;
  // The paper's "subject first": the prompt starts with the subject (its first token is the
  // prompt's first token), whatever the subject's length.
  outcome.subject_first = request.prompt.rfind("{}", 0) == 0;
}

// The update's and keys' numbers in the result: denominator, norms, the optimisation's trajectory.
void describe_update(const EditOutcome& outcome, double weight_norm, nlohmann::json& result) {
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
}

// The target's scores with ΔW applied: NLL of target_new on the scored prompt (efficacy) and the
// log-probabilities of both targets on the bare prompt.
struct TargetMetrics {
  std::optional<double> nll_after, efficacy;
};
TargetMetrics target_metrics_after(const LoadedModel& loaded, const EditRequest& request,
                                   const std::string& scored_prompt, ScoringCache* cache, nlohmann::json& result) {
  const std::string bare_prompt = fill_placeholder(request.prompt, request.subject);
  const bool has_true = !request.target_true.empty();
  std::vector<PromptTarget> pairs = {{bare_prompt, request.target_new}, {scored_prompt, request.target_new}};
  if (has_true) pairs.push_back({bare_prompt, request.target_true});
  std::vector<TargetScore> scores;
  if (cache) {  // one pass from the cached layer on
    scores = score_targets(*loaded.model, *loaded.tokenizer, loaded.add_bos, pairs, cache);
  } else {
    for (const auto& pair : pairs)
      scores.push_back(score_target(*loaded.model, *loaded.tokenizer, loaded.add_bos, pair.prompt, pair.target));
  }
  result["logprob_target_new_after"] = scores[0].mean_logprob;
  result["logprob_target_true_after"] = has_true ? nlohmann::json(scores[2].mean_logprob) : nlohmann::json(nullptr);
  result["efficacy"] = scores[1].token_accuracy;
  result["efficacy_prompt"] = scored_prompt;
  return {-scores[1].mean_logprob, scores[1].token_accuracy};
}

// −log p(target_new | scored prompt) per token, before ΔW.
double target_nll_before(const LoadedModel& loaded, const EditRequest& request, const std::string& scored_prompt,
                         ScoringCache* cache) {
  if (!cache)
    return -score_target(*loaded.model, *loaded.tokenizer, loaded.add_bos, scored_prompt, request.target_new).mean_logprob;
  return -score_targets(*loaded.model, *loaded.tokenizer, loaded.add_bos, {{scored_prompt, request.target_new}}, cache)[0]
              .mean_logprob;
}

// Perplexity before and after ΔW, and whether the model collapsed; returns the perplexity after.
std::optional<PerplexitySummary> perplexity_metrics(const CausalLM& model, const EditConfig& config,
                                                    const EditContext& context, const EditOptions& options,
                                                    nlohmann::json& result) {
  if (!context.perplexity_before) {
    result["perplexity_before"] = nullptr;
    result["perplexity_after"] = nullptr;
    result["collapse"] = nullptr;
    return std::nullopt;
  }
  PerplexitySummary after = options.perplexity_after ? *options.perplexity_after
                            : options.perplexity_reuse ? perplexity_reusing(model, *options.perplexity_reuse)
                                                       : perplexity(model, context.perplexity_ids, config.perplexity_batch_size);
  result["perplexity_before"] = to_json(*context.perplexity_before, false);
  result["perplexity_after"] = to_json(after, false);
  result["collapse"] = after.mean > config.collapse_ratio * context.perplexity_before->mean;
  return after;
}

// Metrics: ΔW applied to W, perplexity and target scores, W restored afterwards (bit for bit: the
// original tensor is put back) unless keep_update; then the convergence verdict.
void edit_metrics(LoadedModel& loaded, const EditConfig& config, const EditRequest& request, EditMethod method,
                  const EditContext& context, const EditOptions& options, PhaseClock& clock, EditOutcome& outcome,
                  nlohmann::json& result) {
  const int64_t layer = config.hparams.layer;
  const std::string scored_prompt = efficacy_prompt(request, method, context.templates, config.prefix_index);
  std::optional<double> nll_before;
  TargetMetrics after;
  clock.begin();
  if (options.evaluate) nll_before = target_nll_before(loaded, request, scored_prompt, options.scoring_cache);
  const at::Tensor original_weight = loaded.model->rewrite_weight(layer);
  loaded.model->set_rewrite_weight(layer, original_weight + outcome.delta_weight);
  try {
    if (options.evaluate) after = target_metrics_after(loaded, request, scored_prompt, options.scoring_cache, result);
    clock.end("evaluation");
    if (options.evaluate) {
      clock.begin();
      outcome.perplexity_after = perplexity_metrics(*loaded.model, config, context, options, result);
      clock.end("perplexity");
    }
  } catch (...) {
    loaded.model->set_rewrite_weight(layer, original_weight);
    throw;
  }
  if (!options.keep_update) loaded.model->set_rewrite_weight(layer, original_weight);
  result["convergence"] = to_json(assess_convergence(outcome.value, after.efficacy, nll_before, after.nll_after));
}

// The vectors of the edit (dump_vectors), for comparison with the paper's code.
nlohmann::json edit_vectors(const EditOutcome& outcome) {
  const auto& keys = outcome.keys;
  return {{"prefixed_key_mean", to_vector(keys.prefixed_key_mean)},
          {"unprefixed_key", to_vector(keys.unprefixed_key)},
          {"left_vector", to_vector(outcome.update.left)},
          {"right_vector", to_vector(outcome.update.right)},
          {"v_star", to_vector(outcome.value.v_star)},
          {"unprefixed_output", to_vector(keys.unprefixed_output)},
          {"prefixed_output_mean", to_vector(keys.prefixed_output_mean)}};
}

nlohmann::json edit_provenance(const LoadedModel& loaded, const EditConfig& config, const SecondMoment* moment,
                               ForwardPath path) {
  nlohmann::json covariance = nullptr;
  if (moment)
    covariance = {{"file", moment->source}, {"sha256", moment->sha256}, {"count", moment->count},
                  {"ridge", config.hparams.mom2_ridge}};
  nlohmann::json provenance = base_provenance(loaded, config);
  provenance["prefix_index"] = config.prefix_index;
  provenance["covariance"] = covariance;
  provenance["forward_path"] = path == ForwardPath::Optimized ? "optimized" : "reference";
  return provenance;
}

// The requests of a group in passes of similar recompute window (the tokens from the subject on):
// a pass pads every row to its longest window, so requests whose windows differ by more than one
// token go to separate passes. Sorted by window, then by index: the same group gives the same passes.
std::vector<std::vector<size_t>> passes_by_window(const std::vector<ValueBatch>& batches) {
  std::vector<size_t> order(batches.size());
  std::vector<int64_t> window(batches.size());
  for (size_t i = 0; i < batches.size(); ++i) order[i] = i, window[i] = recompute_window(batches[i]);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return window[a] < window[b]; });
  std::vector<std::vector<size_t>> passes;
  for (size_t i : order) {
    if (passes.empty() || window[i] > window[passes.back().front()] + 1) passes.emplace_back();
    passes.back().push_back(i);
  }
  return passes;
}

const SecondMoment* second_moment_of(const EditContext& context) {
  return context.second_moment ? &*context.second_moment : nullptr;
}

// The test-time prefix template for c-rome-prefix: templates[1 + index % (n - 1)].
std::string test_time_prefix(const std::vector<std::string>& templates, int64_t index) {
  if (templates.size() < 2) return "{}";
  return templates[1 + index % static_cast<int64_t>(templates.size() - 1)];
}

}  // namespace

void check_edit_inputs(const LoadedModel& loaded, const EditConfig& config) {
  const auto& model_config = loaded.model->config();
  const auto& hp = config.hparams;
  if (hp.layer < 0 || hp.layer >= model_config.n_layers)
    throw InputError(config.source + ": hparams.layer: " + std::to_string(hp.layer) + " is out of range for a model with " +
                     std::to_string(model_config.n_layers) + " layers");
  if (hp.v_loss_layer < hp.layer || hp.v_loss_layer >= model_config.n_layers)
    throw InputError(config.source + ": hparams.v_loss_layer: " + std::to_string(hp.v_loss_layer) +
                     " must be in [layer, " + std::to_string(model_config.n_layers - 1) + "]");
  check_module_names(*loaded.model, config.module_names, hp.layer, config.source + ": hparams");
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
          {"hparams_source", config.hparams_source},
          {"template_source", config.templates.generate ? "generated" : "fixed"},
          {"template_seed", config.templates.generate ? nlohmann::json(config.templates.generation.seed)
                                                     : nlohmann::json(nullptr)}};
}

std::string efficacy_prompt(const EditRequest& request, EditMethod method, const std::vector<std::string>& templates,
                            int64_t prefix_index) {
  const std::string bare = fill_placeholder(request.prompt, request.subject);
  return method == EditMethod::CRomePrefix ? fill_placeholder(test_time_prefix(templates, prefix_index), bare) : bare;
}

std::vector<std::vector<int64_t>> perplexity_text_ids(const LoadedModel& loaded, const EditConfig& config) {
  try {
    return perplexity_token_ids(*loaded.tokenizer, read_texts(config.perplexity_texts),
                                loaded.model->config().max_positions);
  } catch (const InputError& e) {
    const std::string what = e.what();
    throw InputError(what.rfind(config.perplexity_texts, 0) == 0 ? what : config.perplexity_texts + ": " + what);
  }
}

EditContext prepare_edit_context(const LoadedModel& loaded, const EditConfig& config) {
  EditContext context;
  context.templates = resolve_templates(loaded, config.templates);
  if (!config.perplexity_texts.empty()) {
    context.perplexity_ids = perplexity_text_ids(loaded, config);
    context.perplexity_before = perplexity(*loaded.model, context.perplexity_ids, config.perplexity_batch_size);
  }
  if (config.hparams.mom2_adjustment) context.second_moment = read_second_moment_npz(config.hparams.stats);
  return context;
}

PreparedEdit prepare_edit(const LoadedModel& loaded, const EditConfig& config, const EditRequest& request,
                          const EditContext& context, ForwardPath path) {
  check_edit_inputs(loaded, config);
  check_subject_boundary(*loaded.tokenizer, loaded.add_bos, request.prompt, request.subject, config.source + ": request");
  const CausalLM& model = *loaded.model;
  const RomeHparams& hp = config.hparams;
  PhaseClock clock(model.device(), config.record_timings);
  PreparedEdit prepared;
  prepared.request = request;

  // Templates and keys (k̄, kᵘ): the keys and the v* batch share one forward pass up to layer L.
  clock.begin();
  const ValueBatch batch = templated_prompts(loaded, config, request, context);
  const RewriteLayerInput layer_input =
      rewrite_layer_input(model, batch, hp.layer, /*record_cache=*/path == ForwardPath::Optimized);
  prepared.keys = edit_keys(loaded, request, context, batch, layer_input, hp.layer);
  clock.end("keys");

  clock.begin();  // left vector u = C⁻¹k̄ / ‖C⁻¹k̄‖
  prepared.left = left_vector(prepared.keys.prefixed_key_mean, second_moment_of(context), hp.mom2_ridge);
  clock.end("left_vector");

  clock.begin();  // v*
  prepared.value = optimize_value(model, batch, layer_input, hp, path);
  clock.end("value_optimisation");
  prepared.seconds = clock.seconds;
  prepared.peak_mib = clock.peak_mib;
  return prepared;
}

std::vector<PreparedEdit> prepare_edits(const LoadedModel& loaded, const EditConfig& config,
                                        const std::vector<EditRequest>& requests, const EditContext& context) {
  check_edit_inputs(loaded, config);
  const CausalLM& model = *loaded.model;
  const RomeHparams& hp = config.hparams;
  PhaseClock clock(model.device(), config.record_timings);
  std::vector<PreparedEdit> prepared(requests.size());
  std::vector<ValueBatch> batches;
  for (const EditRequest& request : requests) {
    check_subject_boundary(*loaded.tokenizer, loaded.add_bos, request.prompt, request.subject, config.source + ": request");
    batches.push_back(templated_prompts(loaded, config, request, context));
  }
  for (const std::vector<size_t>& pass : passes_by_window(batches)) {
    std::vector<ValueBatch> pass_batches;
    for (size_t i : pass) pass_batches.push_back(batches[i]);
    clock.begin();  // one unedited pass for the requests' prompts, then each request's keys and u
    const GroupedLayerInput layer_input = rewrite_layer_inputs(model, pass_batches, hp.layer);
    for (size_t j = 0; j < pass.size(); ++j) {
      PreparedEdit& p = prepared[pass[j]];
      p.request = requests[pass[j]];
      p.keys = edit_keys(loaded, p.request, context, pass_batches[j], layer_input.requests[j], hp.layer);
      p.left = left_vector(p.keys.prefixed_key_mean, second_moment_of(context), hp.mom2_ridge);
      p.group_requests = static_cast<int64_t>(pass.size());
    }
    clock.end("keys");
    clock.begin();
    std::vector<ValueOptimization> values = optimize_values(model, pass_batches, layer_input, hp);
    clock.end("value_optimisation");
    for (size_t j = 0; j < pass.size(); ++j) {
      prepared[pass[j]].value = std::move(values[j]);
      for (const char* phase : {"keys", "value_optimisation"})  // the pass's time, split evenly
        prepared[pass[j]].seconds[phase] = clock.seconds[phase] / double(pass.size());
      prepared[pass[j]].peak_mib = clock.peak_mib;
    }
  }
  return prepared;
}

EditOutcome finish_edit(LoadedModel& loaded, const EditConfig& config, const PreparedEdit& prepared, EditMethod method,
                        const EditContext& context, const EditOptions& options) {
  const CausalLM& model = *loaded.model;
  const RomeHparams& hp = config.hparams;
  const EditRequest& request = prepared.request;
  PhaseClock clock(model.device(), config.record_timings);
  clock.seconds = prepared.seconds;
  clock.peak_mib = prepared.peak_mib;
  EditOutcome outcome;
  outcome.keys = prepared.keys;
  outcome.value = prepared.value;

  clock.begin();  // right vector v = (v* − W k) / (k · u), and ΔW = v uᵀ in W's dtype
  outcome.update = rank_one_update(method, outcome.keys, prepared.left, outcome.value.v_star);
  const at::Tensor original_weight = model.rewrite_weight(hp.layer);
  outcome.delta_weight = outcome.update.delta_weight().to(original_weight.scalar_type());  // [D, F]
  const double weight_norm = original_weight.to(at::kDouble).norm().item<double>();
  clock.end("update");

  locate_subject(loaded, request, outcome);
  nlohmann::json result = {{"schema_version", kResultSchemaVersion}, {"method", to_string(method)},
                           {"request", to_json(request)}, {"layer", hp.layer},
                           {"subject_last_index", outcome.subject_last_index},
                           {"subject_first_token", outcome.subject_first_token},
                           {"subject_first", outcome.subject_first}};
  describe_update(outcome, weight_norm, result);
  edit_metrics(loaded, config, request, method, context, options, clock, outcome, result);

  result["context_templates"] = context.templates;
  if (config.record_timings) {
    result["timings_s"] = clock.seconds;
    result["peak_memory_mib"] = clock.peak_mib;  // per phase, on the model's device
    if (prepared.group_requests > 1) result["group_requests"] = prepared.group_requests;
  }
  if (config.dump_vectors) result["vectors"] = edit_vectors(outcome);
  result["provenance"] = edit_provenance(loaded, config, second_moment_of(context), options.path);
  outcome.result = std::move(result);
  return outcome;
}

EditOutcome run_edit(LoadedModel& loaded, const EditConfig& config, const EditRequest& request, EditMethod method,
                     const EditContext& context, const EditOptions& options) {
  return finish_edit(loaded, config, prepare_edit(loaded, config, request, context, options.path), method, context,
                     options);
}

}  // namespace rc
