#pragma once
// `check`: the collapse guard. For each request it computes only what ROME's denominator needs —
// the keys k̄ and kᵘ (one forward pass stopped after layer L, the templates of many requests
// batched together) and the left vector u — and compares
//   ROME   denominator  kᵘ · u   (the paper's code)
//   C-ROME denominator  k̄ · u
// A request whose ROME denominator is small, absolutely or relative to C-ROME's, is one whose
// ROME update ‖ΔW‖ = ‖v* − W kᵘ‖ / |kᵘ · u| blows up: the paper's collapse, found without
// optimising v* or measuring perplexity.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/io/request_file.h"
#include "rome_collapse/model/loaded_model.h"
#include "rome_collapse/rome/covariance.h"
#include "rome_collapse/rome/edit.h"
#include "rome_collapse/rome/key_source.h"
#include "rome_collapse/rome/keys.h"
#include "rome_collapse/util/progress.h"

namespace rc {

// ---- Batched key extraction --------------------------------------------------------------

// One row of a key batch: token ids and the position whose key is wanted.
struct KeyRow {
  std::vector<int64_t> ids;
  int64_t position = 0;
};

// Rewrite-module inputs [N, F] and outputs [N, D] at each row's position, N = rows.size(), in
// forward passes of at most `max_batch_tokens` (rows × padded length) each; a row longer than
// the budget gets a pass of its own.
struct CollectedKeys {
  at::Tensor keys;
  at::Tensor outputs;
  int64_t forward_passes = 0;
};
// Rows are token ids of texts; the source turns them into model inputs (T5 appends "</s>").
// `progress` (optional) advances by the rows of each pass.
CollectedKeys collect_keys(const KeySource& source, const std::vector<KeyRow>& rows, int64_t layer,
                           int64_t position_offset = 0, int64_t max_batch_tokens = 8192,
                          ProgressReporter* progress = nullptr);
CollectedKeys collect_keys(const CausalLM& model, const std::vector<KeyRow>& rows, int64_t layer, int64_t pad_id,
                           int64_t position_offset = 0, int64_t max_batch_tokens = 8192);

// compute_keys for many requests: the templates of several requests go through one forward pass.
std::vector<KeySet> compute_keys_batched(const KeySource& source, const Tokenizer& tokenizer, bool add_bos,
                                         const std::vector<EditRequest>& requests,
                                         const std::vector<std::string>& templates, int64_t layer,
                                         int64_t position_offset = 0, int64_t max_batch_tokens = 8192,
                                         int64_t* forward_passes = nullptr, ProgressReporter* progress = nullptr);
std::vector<KeySet> compute_keys_batched(const CausalLM& model, const Tokenizer& tokenizer, bool add_bos,
                                         const std::vector<EditRequest>& requests,
                                         const std::vector<std::string>& templates, int64_t layer, int64_t pad_id,
                                         int64_t position_offset = 0, int64_t max_batch_tokens = 8192,
                                         int64_t* forward_passes = nullptr);

// ---- Configuration shared by check and keys ---------------------------------------------

// An edit config read for key-only work: the request set comes from `requests_file` when given,
// else from the config's "requests" / "request" / "dataset" (a request file, relative to the config).
// v* settings (v_loss_layer, steps, ...) are accepted and ignored.
struct KeyRunSetup {
  EditConfig config;
  RequestSet requests;
};
KeyRunSetup read_key_run_setup(const std::filesystem::path& config_path, const std::string& requests_file);

// Loads what a key-only run needs besides the model: the templates and, with mom2_adjustment, C.
// InputError when hparams.layer is outside the model (T5: its encoder), or when templates are to
// be generated for T5 (the paper generates them with a causal LM; T5 runs take them as a list).
struct KeyRunContext {
  std::vector<std::string> templates;
  std::optional<SecondMoment> second_moment;
};
KeyRunContext prepare_key_run(const LoadedModel& loaded, const EditConfig& config);

// The prompt starts with the subject (the paper's collapse cases), and the subject's last token
// is the very first token (after any BOS).
bool subject_first(const EditRequest& request);
bool subject_first_token(const LoadedModel& loaded, const EditRequest& request);

// What every per-request report (check, keys) says of a request: which one, and where its subject sits.
struct RequestIdentity {
  EditRequest request;
  nlohmann::json id;  // the record's case_id, else its index in the file
  bool subject_first = false;
  bool subject_first_token = false;
  int64_t subject_last_index = 0;
};
// check_subject_boundary for every request, naming the request set and the request's id.
void check_subject_boundaries(const LoadedModel& loaded, const RequestSet& requests);

RequestIdentity identify_request(const LoadedModel& loaded, const RequestSet& requests, size_t index);
// {"index", "id", "request", "subject_first", "subject_first_token", "subject_last_index"}, to which a
// report adds its own numbers.
nlohmann::json identity_json(const RequestIdentity& identity, size_t index);
// The provenance of a check or keys report: base_provenance plus the weight whose input the keys are
// and where the requests came from (file or config, and the layout read).
nlohmann::json key_run_provenance(const LoadedModel& loaded, const EditConfig& config, const RequestSet& requests);
// "prompt (subject)" in at most 40 bytes, the first column of the check and keys tables.
std::string table_label(const EditRequest& request);

// ---- The check itself ------------------------------------------------------------------

struct CheckThresholds {
  double min_abs_denominator = 0.0;  // |kᵘ·u| below this fails (0: off; the scale depends on the model)
  double min_ratio = 0.5;            // |kᵘ·u| / |k̄·u| below this fails (ROME's ΔW > 2× C-ROME's)
};

struct RequestCheck : RequestIdentity {
  double rome_denominator = 0;     // kᵘ · u
  double c_rome_denominator = 0;   // k̄ · u
  double ratio = 0;                // |ROME| / |C-ROME| (inf when C-ROME's is 0)
  double cos_unprefixed_prefixed = 0;
  double unprefixed_key_norm = 0, prefixed_key_norm = 0;
  bool passed = true;
  std::vector<std::string> failures;  // why it failed, one line per threshold
};

struct CheckReport {
  std::vector<RequestCheck> requests;
  CheckThresholds thresholds;
  std::vector<std::string> templates;
  double key_seconds = 0;          // key extraction and denominators, model loading excluded
  int64_t forward_passes = 0;
  bool all_passed() const;
  int64_t failed_count() const;
};

// The verdict for one request's denominators.
void apply_thresholds(RequestCheck& check, const CheckThresholds& thresholds);

// `progress` (optional) counts prompts (requests × templates).
CheckReport run_check(const LoadedModel& loaded, const EditConfig& config, const RequestSet& requests,
                      const KeyRunContext& context, const CheckThresholds& thresholds,
                      ProgressReporter* progress = nullptr);

// JSON with every request's numbers and verdict, the thresholds, a summary and provenance.
nlohmann::json to_json(const CheckReport& report, const LoadedModel& loaded, const EditConfig& config,
                       const RequestSet& requests);
// The readable table printed by the CLI.
std::string format_check_table(const CheckReport& report);

}  // namespace rc
