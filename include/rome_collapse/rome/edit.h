#pragma once
// One edit, in the paper's order: templates -> keys (k̄, kᵘ) -> left vector u -> v* -> right
// vector -> ΔW -> metrics. Each step is a function of rome/; this file strings them together
// and turns the outcome into the result JSON.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "rome_collapse/eval/edit_metrics.h"
#include "rome_collapse/eval/perplexity.h"
#include "rome_collapse/io/request.h"
#include "rome_collapse/model/loaded_model.h"
#include "rome_collapse/rome/covariance.h"
#include "rome_collapse/rome/hparams.h"
#include "rome_collapse/rome/templates.h"
#include "rome_collapse/rome/update.h"
#include "rome_collapse/rome/value.h"

namespace rc {

// Version of the edit result: `edit` always writes {"schema_version", "results": [...]}, one
// result per (request, method); 2 since that envelope (1: a bare result for one edit).
inline constexpr int kResultSchemaVersion = 2;

struct EditConfig {
  std::string source;               // config file path (for errors and provenance)
  std::string config_sha256;
  nlohmann::json raw;               // the config as read
  std::string model, tokenizer;     // resolved paths
  std::optional<bool> add_bos;
  std::string device = "cpu";
  std::string dtype = "float32";
  EditMethod method = EditMethod::Rome;
  EditRequest request;
  RomeHparams hparams;
  TemplateSpec templates;
  std::string perplexity_texts;     // empty: no perplexity
  int64_t perplexity_batch_size = 10;
  double collapse_ratio = 10.0;
  bool dump_vectors = false;
  int64_t prefix_index = 0;         // c-rome-prefix: template 1 + (prefix_index % (n - 1)) at test time
  bool record_timings = true;       // per-phase wall times in the result (the only non-reproducible field)
  // From imported hparams (hparams_import.h): module names to check against the model, EasyEdit's
  // evaluation length, and the provenance of the hparams (file, format, fields accepted but unused).
  std::map<std::string, std::string> module_names;
  std::optional<int64_t> evaluation_max_length;
  nlohmann::json hparams_source = nullptr;
  bool v_loss_layer_given = true;   // false: fit_to_model (experiment/edit_config.h) sets it to the model's last layer
  std::filesystem::path base_dir = ".";  // the config's folder: relative model/tokenizer names are tried there first
};

// Per-run state shared by many edits: templates, the perplexity texts' token ids and the
// unedited model's perplexity, and the second moment.
struct EditContext {
  std::vector<std::string> templates;
  std::vector<std::vector<int64_t>> perplexity_ids;
  std::optional<PerplexitySummary> perplexity_before;
  std::optional<SecondMoment> second_moment;
};
EditContext prepare_edit_context(const LoadedModel& loaded, const EditConfig& config);
// The token ids of config.perplexity_texts (errors name the file).
std::vector<std::vector<int64_t>> perplexity_text_ids(const LoadedModel& loaded, const EditConfig& config);

struct EditOutcome {
  nlohmann::json result;
  RankOneUpdate update;
  KeySet keys;
  ValueOptimization value;
  int64_t subject_last_index = 0;
  bool subject_first_token = false;  // the subject's last token is the prompt's first token
  bool subject_first = false;        // the prompt starts with the subject (the paper's collapse cases)
  at::Tensor delta_weight;           // ΔW [D, F] in W's dtype
  std::optional<PerplexitySummary> perplexity_after;
};

struct EditOptions {
  ForwardPath path = ForwardPath::Optimized;
  bool keep_update = false;     // sequential editing: leave ΔW applied
  bool evaluate = true;         // perplexity and target metrics after the edit
  // The perplexity texts' hidden states entering the edited layer, recorded by the unedited pass
  // (batch): the perplexity after the edit recomputes only the layers the edit can change.
  PerplexityReuse* perplexity_reuse = nullptr;
  // The perplexity after this very ΔW, already measured (batch: C-ROME-prefix writes C-ROME's ΔW).
  std::optional<PerplexitySummary> perplexity_after;
  // The prompts' hidden states entering the edited layer (batch: the record's, from its pre-edit
  // scoring): the target scores before and after ΔW are one pass each, from that layer on.
  ScoringCache* scoring_cache = nullptr;
};

// Runs one edit on `loaded` (W is restored afterwards unless keep_update), returning the result.
EditOutcome run_edit(LoadedModel& loaded, const EditConfig& config, const EditRequest& request, EditMethod method,
                     const EditContext& context, const EditOptions& options = {});

// What an edit computes before the method matters: the keys (k̄, kᵘ), the left vector u and v*.
// ROME, C-ROME and C-ROME-prefix of one request share all of it; they differ in the rank-one
// update's denominator and right vector (and C-ROME-prefix only at test time).
struct PreparedEdit {
  EditRequest request;
  KeySet keys;
  at::Tensor left;                     // u [F]
  ValueOptimization value;
  std::map<std::string, double> seconds, peak_mib;  // keys, left_vector, value_optimisation
  int64_t group_requests = 1;          // requests whose keys and v* shared passes (their times are split evenly)
};
PreparedEdit prepare_edit(const LoadedModel& loaded, const EditConfig& config, const EditRequest& request,
                          const EditContext& context, ForwardPath path = ForwardPath::Optimized);
// Several independent requests prepared together: those of similar recompute window (within one
// token) share one unedited pass over their prompts and one v* pass per iteration
// (rome/value_group.h). Equal to prepare_edit per request within float rounding.
std::vector<PreparedEdit> prepare_edits(const LoadedModel& loaded, const EditConfig& config,
                                        const std::vector<EditRequest>& requests, const EditContext& context);
// The rest of an edit with `method`: ΔW, its metrics (options.evaluate) and the result JSON.
EditOutcome finish_edit(LoadedModel& loaded, const EditConfig& config, const PreparedEdit& prepared, EditMethod method,
                        const EditContext& context, const EditOptions& options = {});

// Validates the request against the model and config (layer range, context length, ...).
void check_edit_inputs(const LoadedModel& loaded, const EditConfig& config);

// The provenance block every result shares: tool version, config and its sha256, model,
// architecture, tokenizer, BOS, device, dtype, hparams and where the templates came from.
nlohmann::json base_provenance(const LoadedModel& loaded, const EditConfig& config);
// The files the tokenizer was read from, each {"path", "sha256"} (builtin tokenizers: none).
nlohmann::json tokenizer_files_provenance(const Tokenizer& tokenizer);

// The prompt an edit's efficacy is scored on: the request's prompt with its subject, behind the
// test-time prefix (templates[1 + prefix_index % (n - 1)]) for c-rome-prefix, bare otherwise.
std::string efficacy_prompt(const EditRequest& request, EditMethod method, const std::vector<std::string>& templates,
                            int64_t prefix_index);

}  // namespace rc
