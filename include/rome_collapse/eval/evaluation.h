#pragma once
// The paper's evaluation of one edit (EasyEdit's compute_edit_quality / test_prediction_acc):
//   efficacy       teacher-forced token accuracy of " target_new" after the rewrite prompt
//   generalisation the same after each paraphrase, averaged
//   locality       share of each neighbourhood answer's positions whose post-edit argmax equals
//                  the pre-edit argmax (teacher-forced on prompt + " " + answer), averaged
// and ROME's probability comparisons (compute_rewrite_quality_counterfact): the share of rewrite /
// paraphrase prompts where mean log p(target_new) > mean log p(target_true), and of neighbourhood
// prompts where the neighbour's answer keeps the higher mean log-probability.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/eval/edit_metrics.h"
#include "rome_collapse/io/dataset.h"
#include "rome_collapse/model/loaded_model.h"

namespace rc {

struct EvaluationOptions {
  // EasyEdit's hparams.max_length: test_prediction_acc truncates at max(max_length, len(prompt+target)+1)
  // tokens, which never cuts a single prompt; kept so its hparams files are taken as they are.
  int64_t max_length = 40;
};

// One record scored on the model as it is now (before or after an edit).
struct RecordScores {
  std::string efficacy_prompt;
  double rewrite_acc = 0;
  std::vector<double> rephrase_acc;                      // one per paraphrase
  std::vector<std::vector<int64_t>> locality_predicted;  // argmax over each neighbourhood answer
  // mean token log-probabilities (ROME's probability metrics); target_true empty: NaN
  double rewrite_logprob_new = 0, rewrite_logprob_true = 0;
  std::vector<double> paraphrase_logprob_new, paraphrase_logprob_true;
  std::vector<double> neighbourhood_logprob_new, neighbourhood_logprob_answer;
};

// `efficacy_prompt`: the filled rewrite prompt (c-rome-prefix: with its test-time prefix).
RecordScores score_record(const LoadedModel& loaded, const EditRecord& record, const std::string& efficacy_prompt,
                          const EvaluationOptions& options);

// score_record with every (prompt, target) sequence of the record in one right-padded pass (logits only at the
// target positions) instead of one pass per pair, through `cache` (eval/edit_metrics.h): the first (pre-edit)
// scoring keeps the hidden states entering cache.layer() of each sequence, a later (post-edit) scoring of the same
// sequences starts there, and sequences not seen before (c-rome-prefix's prefixed efficacy prompt) run the layers
// below first. The same RecordScores as score_record within float rounding; the same InputError for a target
// that adds no tokens. A cache may be kept per record or per run (clear() it when layers below change).
RecordScores score_record_reusing(const LoadedModel& loaded, const EditRecord& record,
                                  const std::string& efficacy_prompt, const EvaluationOptions& options,
                                  ScoringCache& cache);

// {"efficacy", "generalisation", "locality", their "_pre" values, "rewrite_prompts_correct", ...,
//  "pre": {...}, "post": {...}} — null where the record has no paraphrase / neighbourhood / target_true.
nlohmann::json edit_quality_json(const RecordScores& pre, const RecordScores& post);

// Which texts of a corpus feed the perplexity: "lines" (non-blank lines) or "paragraphs"
// (separated by blank lines), keeping those longer than `longer_than` characters, the first
// `first` of them (0: all), each cut at `cut_at` characters (0: whole). Characters are Unicode
// code points, as Python's len() and slicing count them.
struct TextSelection {
  std::string split = "lines";
  int64_t longer_than = 0;
  int64_t cut_at = 0;
  int64_t first = 0;
};
TextSelection parse_text_selection(const nlohmann::json& json, const std::string& where);
nlohmann::json to_json(const TextSelection& selection);
std::vector<std::string> select_texts(const std::string& contents, const TextSelection& selection);

}  // namespace rc
