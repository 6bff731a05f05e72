#include "rome_collapse/eval/evaluation.h"

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "rome_collapse/eval/edit_metrics.h"
#include "rome_collapse/util/error.h"

namespace rc {
namespace {

using json = nlohmann::json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

json mean_or_null(const std::vector<double>& values) {
  if (values.empty()) return nullptr;
  double sum = 0;
  for (double v : values) sum += v;
  return sum / double(values.size());
}

json number_or_null(double value) { return std::isnan(value) ? json(nullptr) : json(value); }

// ROME's discrete probability metric: share of prompts where `better` beats `worse`.
json share_greater(const std::vector<double>& better, const std::vector<double>& worse) {
  if (better.empty() || std::isnan(worse.front())) return nullptr;
  double count = 0;
  for (size_t i = 0; i < better.size(); ++i) count += better[i] > worse[i];
  return count / double(better.size());
}

double locality_share(const std::vector<int64_t>& post, const std::vector<int64_t>& pre) {
  // np.mean(np.equal(post, pre)) over the answer's positions (same tokens, so same length).
  size_t equal = 0;
  for (size_t i = 0; i < post.size(); ++i) equal += post[i] == pre[i];
  return double(equal) / double(post.size());
}

json scores_json(const RecordScores& s) {
  return {{"efficacy_prompt", s.efficacy_prompt},
          {"rewrite_acc", s.rewrite_acc},
          {"rephrase_acc", s.rephrase_acc},
          {"rewrite_logprob_new", s.rewrite_logprob_new},
          {"rewrite_logprob_true", number_or_null(s.rewrite_logprob_true)},
          {"paraphrase_logprob_new", s.paraphrase_logprob_new},
          {"paraphrase_logprob_true", s.paraphrase_logprob_true},
          {"neighbourhood_logprob_new", s.neighbourhood_logprob_new},
          {"neighbourhood_logprob_answer", s.neighbourhood_logprob_answer},
          {"locality_predicted", s.locality_predicted}};
}

// Rewrite, paraphrase and neighbourhood probability metrics of one state (pre or post).
void probability_metrics(const RecordScores& s, json& out, const std::string& suffix) {
  out["rewrite_prompts_correct" + suffix] =
      std::isnan(s.rewrite_logprob_true) ? json(nullptr) : json(s.rewrite_logprob_new > s.rewrite_logprob_true ? 1.0 : 0.0);
  out["paraphrase_prompts_correct" + suffix] =
      std::isnan(s.rewrite_logprob_true) ? json(nullptr) : share_greater(s.paraphrase_logprob_new, s.paraphrase_logprob_true);
  out["neighborhood_prompts_correct" + suffix] =
      share_greater(s.neighbourhood_logprob_answer, s.neighbourhood_logprob_new);
}

size_t utf8_length(const std::string& text) {
  size_t n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

std::string utf8_prefix(const std::string& text, size_t code_points) {
  size_t n = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
      if (n == code_points) return text.substr(0, i);
      ++n;
    }
  }
  return text;
}

std::string trim(const std::string& text) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

}  // namespace

RecordScores score_record(const LoadedModel& loaded, const EditRecord& record, const std::string& efficacy_prompt,
                          const EvaluationOptions& options) {
  // test_prediction_acc's truncation limit max(max_length, n + 1) exceeds every sequence it is
  // applied to, so score_target's untruncated teacher forcing is the same computation.
  (void)options;
  const CausalLM& model = *loaded.model;
  const Tokenizer& tokenizer = *loaded.tokenizer;
  const EditRequest& request = record.request;
  const bool has_true = !request.target_true.empty();
  auto score = [&](const std::string& prompt, const std::string& target) {
    return score_target(model, tokenizer, loaded.add_bos, prompt, target);
  };
  RecordScores s;
  s.efficacy_prompt = efficacy_prompt;
  const TargetScore rewrite = score(efficacy_prompt, request.target_new);
  s.rewrite_acc = rewrite.token_accuracy;
  s.rewrite_logprob_new = rewrite.mean_logprob;
  s.rewrite_logprob_true = has_true ? score(efficacy_prompt, request.target_true).mean_logprob : kNaN;
  for (const auto& paraphrase : record.paraphrases) {
    const TargetScore new_score = score(paraphrase, request.target_new);
    s.rephrase_acc.push_back(new_score.token_accuracy);
    s.paraphrase_logprob_new.push_back(new_score.mean_logprob);
    s.paraphrase_logprob_true.push_back(has_true ? score(paraphrase, request.target_true).mean_logprob : kNaN);
  }
  for (const auto& neighbour : record.neighbourhood) {
    const TargetScore answer = score(neighbour.prompt, neighbour.answer);
    s.locality_predicted.push_back(answer.predicted);
    s.neighbourhood_logprob_answer.push_back(answer.mean_logprob);
    s.neighbourhood_logprob_new.push_back(score(neighbour.prompt, request.target_new).mean_logprob);
  }
  return s;
}

RecordScores score_record_reusing(const LoadedModel& loaded, const EditRecord& record,
                                  const std::string& efficacy_prompt, const EvaluationOptions& options,
                                  ScoringCache& cache) {
  (void)options;  // as in score_record
  const EditRequest& request = record.request;
  const bool has_true = !request.target_true.empty();
  // score_record's pairs in its order (the first target adding no tokens is the one it names).
  std::vector<PromptTarget> pairs = {{efficacy_prompt, request.target_new}};
  if (has_true) pairs.push_back({efficacy_prompt, request.target_true});
  for (const auto& paraphrase : record.paraphrases) {
    pairs.push_back({paraphrase, request.target_new});
    if (has_true) pairs.push_back({paraphrase, request.target_true});
  }
  for (const auto& neighbour : record.neighbourhood) {
    pairs.push_back({neighbour.prompt, neighbour.answer});
    pairs.push_back({neighbour.prompt, request.target_new});
  }
  const std::vector<TargetScore> scores = score_targets(*loaded.model, *loaded.tokenizer, loaded.add_bos, pairs, &cache);
  auto next = scores.begin();
  RecordScores s;
  s.efficacy_prompt = efficacy_prompt;
  s.rewrite_acc = next->token_accuracy;
  s.rewrite_logprob_new = (next++)->mean_logprob;
  s.rewrite_logprob_true = has_true ? (next++)->mean_logprob : kNaN;
  for (size_t i = 0; i < record.paraphrases.size(); ++i) {
    s.rephrase_acc.push_back(next->token_accuracy);
    s.paraphrase_logprob_new.push_back((next++)->mean_logprob);
    s.paraphrase_logprob_true.push_back(has_true ? (next++)->mean_logprob : kNaN);
  }
  for (size_t i = 0; i < record.neighbourhood.size(); ++i) {
    s.locality_predicted.push_back(next->predicted);
    s.neighbourhood_logprob_answer.push_back((next++)->mean_logprob);
    s.neighbourhood_logprob_new.push_back((next++)->mean_logprob);
  }
  return s;
}

json edit_quality_json(const RecordScores& pre, const RecordScores& post) {
  json out;
  out["efficacy"] = post.rewrite_acc;
  out["efficacy_pre"] = pre.rewrite_acc;
  out["generalisation"] = mean_or_null(post.rephrase_acc);
  out["generalisation_pre"] = mean_or_null(pre.rephrase_acc);
  std::vector<double> locality;
  for (size_t i = 0; i < post.locality_predicted.size(); ++i)
    locality.push_back(locality_share(post.locality_predicted[i], pre.locality_predicted[i]));
  out["locality"] = mean_or_null(locality);
  out["locality_acc"] = locality;
  probability_metrics(post, out, "");
  probability_metrics(pre, out, "_pre");
  out["pre"] = scores_json(pre);
  out["post"] = scores_json(post);
  return out;
}

TextSelection parse_text_selection(const json& value, const std::string& where) {
  if (!value.is_object()) throw InputError(where + ": expected an object");
  TextSelection selection;
  for (const auto& item : value.items()) {
    const std::string& key = item.key();
    if (key == "split") {
      if (!item.value().is_string() || (item.value() != "lines" && item.value() != "paragraphs"))
        throw InputError(where + ".split: expected \"lines\" or \"paragraphs\"");
      selection.split = item.value().get<std::string>();
    } else if (key == "longer_than" || key == "cut_at" || key == "first") {
      if (!item.value().is_number_integer() || item.value().get<int64_t>() < 0)
        throw InputError(where + "." + key + ": expected a non-negative integer");
      (key == "longer_than" ? selection.longer_than : key == "cut_at" ? selection.cut_at : selection.first) =
          item.value().get<int64_t>();
    } else {
      throw InputError(where + ": unknown field \"" + excerpt(key) + "\"");
    }
  }
  return selection;
}

json to_json(const TextSelection& s) {
  return {{"split", s.split}, {"longer_than", s.longer_than}, {"cut_at", s.cut_at}, {"first", s.first}};
}

std::vector<std::string> select_texts(const std::string& contents, const TextSelection& selection) {
  std::vector<std::string> units;
  std::string current;
  size_t start = 0;
  while (start <= contents.size()) {
    size_t end = contents.find('\n', start);
    if (end == std::string::npos) end = contents.size();
    std::string line = contents.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const bool blank = trim(line).empty();
    if (selection.split == "lines") {
      if (!blank) units.push_back(line);
    } else if (blank) {
      if (!trim(current).empty()) units.push_back(trim(current));
      current.clear();
    } else {
      current += current.empty() ? line : "\n" + line;
    }
    start = end + 1;
  }
  if (!trim(current).empty()) units.push_back(trim(current));
  std::vector<std::string> out;
  for (const auto& unit : units) {
    if (selection.first > 0 && static_cast<int64_t>(out.size()) >= selection.first) break;
    if (static_cast<int64_t>(utf8_length(unit)) <= selection.longer_than) continue;
    out.push_back(selection.cut_at > 0 ? utf8_prefix(unit, static_cast<size_t>(selection.cut_at)) : unit);
  }
  return out;
}

}  // namespace rc
