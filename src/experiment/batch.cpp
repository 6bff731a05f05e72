#include "rome_collapse/experiment/batch.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <iostream>
#include <map>
#include <optional>
#include <set>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/eval/evaluation.h"
#include "rome_collapse/eval/perplexity.h"
#include "rome_collapse/experiment/batch_config.h"
#include "rome_collapse/experiment/edit_config.h"
#include "rome_collapse/experiment/journal.h"
#include "rome_collapse/experiment/tables.h"
#include "rome_collapse/io/dataset.h"
#include "rome_collapse/rome/edit.h"
#include "rome_collapse/rome/subject_boundary.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/fields.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"
#include "rome_collapse/util/run_guard.h"

namespace rc {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr int kRunSchemaVersion = 1;

std::vector<const EditRecord*> records_by_case_id(const Dataset& dataset, const json& cases, const std::string& source) {
  std::map<int64_t, const EditRecord*> by_id;
  for (const auto& r : dataset.records) by_id[r.case_id] = &r;
  std::set<int64_t> wanted;
  for (const auto& id : cases) {
    const int64_t value = id.get<int64_t>();
    if (!by_id.count(value))
      throw InputError(source + ": cases: case id " + std::to_string(value) + " is not in " + dataset.source);
    wanted.insert(value);
  }
  std::vector<const EditRecord*> chosen;
  for (const auto& r : dataset.records)
    if (wanted.count(r.case_id)) {
      if (!r.invalid.empty()) throw InputError(r.invalid);
      chosen.push_back(&r);
    }
  return chosen;
}

std::vector<const EditRecord*> records_in_range(const Dataset& dataset, const json& cases, const std::string& source) {
  const int64_t size = static_cast<int64_t>(dataset.records.size());
  const int64_t start = cases.is_object() ? cases.value("start", int64_t{0}) : 0;
  const int64_t stop = cases.is_object() ? std::min(cases.value("stop", size), size) : size;
  if (start >= stop)
    throw InputError(source + ": cases: the range [" + std::to_string(start) + ", " + std::to_string(stop) +
                     ") selects no record of " + dataset.source + " (" + std::to_string(size) + " records)");
  std::vector<const EditRecord*> chosen;
  for (int64_t i = start; i < stop; ++i) {
    if (dataset.records[i].invalid.empty())
      chosen.push_back(&dataset.records[i]);
    else
      std::cerr << "batch: skipping " << dataset.records[i].invalid << "\n";
  }
  return chosen;
}

std::string duration_text(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buffer;
}

// "2026-12-01 14:35 UTC": when a run was first started, for the tables' heading.
std::string utc_now_text() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M UTC", &utc);
  return text;
}

// Puts W back and proves it is bit for bit the original.
void restore_weight(LoadedModel& loaded, int64_t layer, const at::Tensor& original, const std::string& what) {
  loaded.model->set_rewrite_weight(layer, original);
  if (!at::equal(loaded.model->rewrite_weight(layer), original))
    throw std::runtime_error("rewrite weight of layer " + std::to_string(layer) + " differs from the original after " +
                             what + "; refusing to continue (later edits would start from a modified model)");
}

// A sequential resume recomputes the recorded edits to rebuild the model they left: each must give
// the ||dW|| the run recorded, else the rebuilt model is not the one the run continued from.
void check_replayed_edit(const EditOutcome& outcome, const json& recorded_line, int64_t case_id) {
  const double recorded = recorded_line.at("update_norm").get<double>();
  if (std::abs(outcome.update.update_norm - recorded) > 1e-6 * std::max(1.0, std::abs(recorded)))
    throw std::runtime_error("sequential resume: replaying case " + std::to_string(case_id) + " gives ||dW|| " +
                             std::to_string(outcome.update.update_norm) + ", the run recorded " +
                             std::to_string(recorded) + "; start the run afresh in a new directory");
}

BatchRun read_batch_run(const BatchOptions& options) {
  BatchRun run;
  run.config = parse_edit_config(read_config_document(options.config));
  run.settings =
      parse_batch_settings(run.config, options.config.parent_path().empty() ? "." : options.config.parent_path());
  run.shard = options.shard.empty() ? Shard{} : parse_shard(options.shard);
  if (run.settings.sequential && run.shard.count > 1)
    throw InputError("--shard: a sequential run edits one model in order and cannot be split into shards");
  run.dataset = read_dataset(run.settings.dataset_path, run.settings.dataset_format);
  run.records = select_batch_records(run.dataset, run.settings, run.shard, run.config.source);
  run.dir = options.out.empty() ? fs::path("batch-" + options.config.stem().string()) : options.out;
  std::error_code dir_error;
  fs::create_directories(run.dir, dir_error);
  if (dir_error) fail_input(run.dir.string(), "cannot create the result directory: " + dir_error.message());
  return run;
}

// Every file the run's results depend on, by content: a resume into a run whose inputs changed
// would mix old and new results.
json run_inputs(const BatchRun& run, const LoadedModel& loaded) {
  std::vector<RunInput> inputs = {{"dataset", run.settings.dataset_path},
                                  {"perplexity_texts", run.config.perplexity_texts}};
  if (run.fingerprint_model) {
    inputs.push_back({"model", loaded.model_path});
    inputs.push_back({"tokenizer", loaded.tokenizer_path});
  }
  if (run.config.hparams.mom2_adjustment) inputs.push_back({"stats", run.config.hparams.stats});
  return input_fingerprint(inputs);
}

json run_config_description(const BatchRun& run) {
  const auto& s = run.settings;
  std::vector<std::string> methods;
  for (EditMethod m : s.methods) methods.push_back(to_string(m));
  return {{"methods", methods},
          {"dataset",
           {{"path", s.dataset_path.string()},
            {"format", to_string(run.dataset.format)},
            {"sha256", sha256_file(s.dataset_path)},
            {"records", run.dataset.records.size()}}},
          {"cases", s.cases},
          {"collapse_cases", s.collapse_cases ? json(*s.collapse_cases) : json(nullptr)},
          {"collapse_ratio", run.config.collapse_ratio},
          {"sequential", s.sequential},
          {"evaluation", {{"max_length", s.evaluation.max_length}}},
          {"perplexity_texts", run.config.perplexity_texts},
          {"perplexity_selection", s.perplexity_selection ? to_json(*s.perplexity_selection) : json(nullptr)},
          {"raw", run.config.raw}};
}

// run.json: what the run is, for resuming, merging and the tables' heading.
json run_description(const BatchRun& run, const EditContext& context, const LoadedModel& loaded, const json& inputs) {
  std::vector<int64_t> positions;
  for (const EditRecord* r : run.records) positions.push_back(r->position);
  return {{"schema_version", kRunSchemaVersion},
          {"tool", "rome-collapse"},
          {"version", ROME_COLLAPSE_VERSION},
          {"started_utc", utc_now_text()},
          {"config_source", run.config.source},
          {"config_sha256", run.config.config_sha256},
          {"inputs", inputs},
          {"config", run_config_description(run)},
          {"shard", {{"index", run.shard.index}, {"count", run.shard.count}}},
          {"positions", positions},
          {"context_templates", context.templates},
          {"template_source", run.config.templates.generate ? "generated" : "fixed"},
          {"perplexity_before", context.perplexity_before ? to_json(*context.perplexity_before, false) : json(nullptr)},
          {"provenance", base_provenance(loaded, run.config)}};
}

// Resuming: the same config (by hash) and shard; the recorded templates are reused as they are.
std::optional<json> previous_run(BatchRun& run, const fs::path& run_path) {
  if (!fs::exists(run_path)) return std::nullopt;
  json previous = read_run_json(run_path);
  if (previous.value("config_sha256", "") != run.config.config_sha256)
    throw InputError(run_path.string() + ": this directory holds a run of another config (config_sha256 differs); "
                     "use a new --out directory");
  const json shard = {{"index", run.shard.index}, {"count", run.shard.count}};
  if (previous["shard"] != shard)
    throw InputError(run_path.string() + ": this directory holds shard " + json_excerpt(previous["shard"]) +
                     ", not --shard " + std::to_string(run.shard.index) + "/" + std::to_string(run.shard.count));
  run.config.templates.generate = false;
  run.config.templates.fixed = previous["context_templates"].get<std::vector<std::string>>();
  return previous;
}

// A subject that ends inside a word is skipped with its tokens shown, not edited.
void drop_subjects_inside_words(BatchRun& run, const LoadedModel& loaded) {
  std::vector<const EditRecord*> kept;
  for (const EditRecord* record : run.records) {
    const SubjectBoundaryCheck check =
        subject_boundary(*loaded.tokenizer, loaded.add_bos, record->request.prompt, record->request.subject,
                         run.dataset.source + ": case " + std::to_string(record->case_id));
    if (check.kind == SubjectBoundary::InsideWord) std::cerr << "batch: skipping " << check.message << "\n";
    else kept.push_back(record);
    if (check.kind == SubjectBoundary::MergedWithPunctuation) std::cerr << "batch: warning: " << check.message << "\n";
  }
  run.records = std::move(kept);
}

// Templates and the unedited perplexity; perplexity_selection picks the texts it is measured on.
// With `reuse` the unedited pass records the hidden states entering the edited layer.
EditContext batch_edit_context(const BatchRun& run, const LoadedModel& loaded, std::optional<PerplexityReuse>& reuse,
                               bool reusing) {
  EditConfig context_config = run.config;
  context_config.perplexity_texts.clear();
  EditContext context = prepare_edit_context(loaded, context_config);
  if (run.config.perplexity_texts.empty()) return context;
  if (run.settings.perplexity_selection) {
    const auto texts = select_texts(read_file(run.config.perplexity_texts), *run.settings.perplexity_selection);
    if (texts.empty()) fail_input(run.config.perplexity_texts, "perplexity_selection keeps no text");
    context.perplexity_ids = perplexity_token_ids(*loaded.tokenizer, texts, loaded.model->config().max_positions);
  } else {
    context.perplexity_ids = perplexity_text_ids(loaded, run.config);
  }
  if (reusing) {
    reuse.emplace(context.perplexity_ids, run.config.perplexity_batch_size, run.config.hparams.layer);
    context.perplexity_before = perplexity_reusing(*loaded.model, *reuse);
  } else {
    context.perplexity_before = perplexity(*loaded.model, context.perplexity_ids, run.config.perplexity_batch_size);
  }
  return context;
}

// What results.jsonl already holds; a line cut off by a kill is dropped from the file first.
std::map<std::string, json> finished_edits(const BatchRun& run, const fs::path& results_path) {
  ResultsFile existing = read_results_file(results_path);
  if (existing.dropped_partial_line) {
    fs::resize_file(results_path, existing.complete_bytes);
    std::cerr << "batch: dropped an incomplete last line of " << results_path.string() << " (an interrupted write)\n";
  }
  std::map<int64_t, int64_t> case_at_position;
  for (const EditRecord* r : run.records) case_at_position[r->position] = r->case_id;
  return finished_pairs(existing, case_at_position, results_path);
}

// Seconds per phase over a run's edits (bench's per-phase report).
class PhaseTimes {
 public:
  void add(const std::string& phase, double seconds) { seconds_[phase] += seconds; }
  // The per-phase times an edit's result records (timings_s; absent with record_timings off).
  void add_result(const json& result, bool with_preparation) {
    if (!result.contains("timings_s")) return;
    for (const auto& item : result["timings_s"].items()) {
      const bool preparation = item.key() == "keys" || item.key() == "left_vector" || item.key() == "value_optimisation";
      if (!preparation || with_preparation) add(phase_of(item.key()), item.value().get<double>());
    }
  }
  void add_prepared(const PreparedEdit& prepared) {
    for (const auto& [phase, seconds] : prepared.seconds) add(phase_of(phase), seconds);
  }
  std::map<std::string, double> with_other(double total) const {
    std::map<std::string, double> out = seconds_;
    double known = 0;
    for (const auto& item : seconds_) known += item.second;
    out["other"] = std::max(0.0, total - known);
    return out;
  }

 private:
  static std::string phase_of(const std::string& phase) { return phase == "left_vector" ? "keys" : phase; }
  std::map<std::string, double> seconds_;
};

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// The edits of a prepared run, appended to results.jsonl one by one until done or asked to stop.
class BatchEditor {
 public:
  BatchEditor(const BatchRun& run, LoadedModel& loaded, const EditContext& context, std::map<std::string, json> done,
              const fs::path& results_path, ResumableRun& guard, const BatchOptions& batch_options,
              PerplexityReuse* perplexity_reuse)
      : run_(run), loaded_(loaded), context_(context), done_(std::move(done)), appender_(results_path),
        guard_(guard), max_edits_(batch_options.max_edits), one_by_one_(batch_options.one_by_one),
        layer_(run.config.hparams.layer), original_weight_(loaded.model->rewrite_weight(layer_).clone()),
        total_(static_cast<int64_t>(run.records.size() * run.settings.methods.size())),
        to_do_(total_ - static_cast<int64_t>(done_.size())) {
    options_.keep_update = true;  // W is restored (and checked) here, after the post-edit evaluation
    options_.perplexity_reuse = perplexity_reuse;
  }

  void run_all() {
    if (run_.settings.sequential) run_sequential();
    else if (one_by_one_) run_independent();
    else run_grouped();
  }
  int64_t new_edits() const { return new_edits_; }
  bool stopped() const { return stopped_; }
  double seconds() const { return seconds_since(started_); }
  std::map<std::string, double> phase_seconds() const { return phases_.with_other(seconds()); }

 private:
  EditConfig config_for(const EditRecord& record) const {
    EditConfig config = run_.config;
    config.prefix_index = record.position;  // c-rome-prefix: context_templates[1 + position % 20] at test time
    return config;
  }
  const json* done_line(const EditRecord& record, EditMethod method) const {
    const auto found = done_.find(pair_key(record.position, to_string(method)));
    return found == done_.end() ? nullptr : &found->second;
  }
  int64_t pending_methods(const EditRecord& record) const {
    int64_t pending = 0;
    for (EditMethod method : run_.settings.methods) pending += done_line(record, method) == nullptr;
    return pending;
  }
  RecordScores score(const EditRecord& record, const std::string& prompt) {
    const auto start = Clock::now();
    RecordScores scores = score_record(loaded_, record, prompt, run_.settings.evaluation);
    phases_.add("evaluation", seconds_since(start));
    return scores;
  }
  RecordScores score_reusing(const EditRecord& record, const std::string& prompt, ScoringCache& scoring) {
    const auto start = Clock::now();
    RecordScores scores = score_record_reusing(loaded_, record, prompt, run_.settings.evaluation, scoring);
    phases_.add("evaluation", seconds_since(start));
    return scores;
  }
  std::string scored_prompt(const EditRecord& record, EditMethod method) const {
    return efficacy_prompt(record.request, method, context_.templates, record.position);
  }

  void run_independent();
  void run_grouped();
  std::vector<const EditRecord*> next_group(size_t& next) const;
  std::vector<PreparedEdit> prepare_group(const std::vector<const EditRecord*>& group);
  void edit_record(const EditRecord& record, const PreparedEdit& prepared);
  void run_sequential();
  void record_line(const EditRecord& record, EditMethod method, const EditOutcome& outcome, const RecordScores& pre,
                   const RecordScores& post, std::optional<int64_t> step);

  const BatchRun& run_;
  LoadedModel& loaded_;
  const EditContext& context_;
  const std::map<std::string, json> done_;
  ResultsAppender appender_;
  ResumableRun& guard_;
  const int64_t max_edits_;
  const bool one_by_one_;
  const int64_t layer_;
  const at::Tensor original_weight_;
  const int64_t total_, to_do_;
  EditOptions options_;
  PhaseTimes phases_;
  const Clock::time_point started_ = Clock::now();
  int64_t new_edits_ = 0;
  bool stopped_ = false;
};

// Today's path before issue 19 (BatchOptions::one_by_one): each edit from the original weights,
// on its own, restored and checked after its evaluation.
void BatchEditor::run_independent() {
  for (const EditRecord* record : run_.records) {
    std::optional<RecordScores> pre;  // the unedited model's scores, shared by the methods
    for (EditMethod method : run_.settings.methods) {
      if (stopped_) break;
      if (done_line(*record, method)) continue;
      if (!pre) pre = score(*record, fill_placeholder(record->request.prompt, record->request.subject));
      EditOutcome outcome;
      RecordScores post;
      try {
        outcome = run_edit(loaded_, config_for(*record), record->request, method, context_, options_);
        phases_.add_result(outcome.result, /*with_preparation=*/true);
        post = score(*record, scored_prompt(*record, method));
      } catch (...) {
        loaded_.model->set_rewrite_weight(layer_, original_weight_);
        throw;
      }
      restore_weight(loaded_, layer_, original_weight_,
                     "case " + std::to_string(record->case_id) + " " + to_string(method));
      record_line(*record, method, outcome, *pre, post, std::nullopt);
    }
    if (stopped_) break;
  }
}

// Independent edits, group_size records at a time: their keys and v* are computed together and
// once per record (the methods differ only in the update), then each (record, method) is finished,
// evaluated and written in the order of the one-at-a-time loop, so the results file is the same.
void BatchEditor::run_grouped() {
  size_t next = 0;
  while (!stopped_ && next < run_.records.size()) {
    const std::vector<const EditRecord*> group = next_group(next);
    if (group.empty()) break;
    const std::vector<PreparedEdit> prepared = prepare_group(group);
    for (size_t i = 0; i < group.size() && !stopped_; ++i)
      if (pending_methods(*group[i]) > 0) edit_record(*group[i], prepared[i]);
  }
}

// The next block of group_size consecutive records that has an edit still to do. Blocks are fixed
// by the records' order, and a block is prepared whole (done records too), so that a resumed run
// computes every v* in the same company as the uninterrupted run: the same numbers, bit for bit.
std::vector<const EditRecord*> BatchEditor::next_group(size_t& next) const {
  const size_t size = static_cast<size_t>(run_.settings.group_size);
  while (next < run_.records.size()) {
    const size_t start = next, stop = std::min(run_.records.size(), start + size);
    next = stop;
    std::vector<const EditRecord*> group(run_.records.begin() + start, run_.records.begin() + stop);
    for (const EditRecord* record : group)
      if (pending_methods(*record) > 0) return group;
  }
  return {};
}

std::vector<PreparedEdit> BatchEditor::prepare_group(const std::vector<const EditRecord*>& group) {
  std::vector<EditRequest> requests;
  for (const EditRecord* record : group) requests.push_back(record->request);
  try {
    std::vector<PreparedEdit> prepared = prepare_edits(loaded_, run_.config, requests, context_);
    for (const PreparedEdit& p : prepared) phases_.add_prepared(p);
    return prepared;
  } catch (const NumericError& e) {
    std::string cases;
    for (const EditRecord* record : group) cases += (cases.empty() ? "" : ", ") + std::to_string(record->case_id);
    throw NumericError(std::string(e.what()) + " (the group of cases " + cases + ", in this order)");
  }
}

// One record's pending methods from its prepared keys and v*. Methods with the same ΔW (C-ROME
// and C-ROME-prefix) share the perplexity after it; the pre-edit scores are the record's own.
void BatchEditor::edit_record(const EditRecord& record, const PreparedEdit& prepared) {
  ScoringCache scoring(layer_);
  const RecordScores pre = score_reusing(record, fill_placeholder(record.request.prompt, record.request.subject), scoring);
  struct SharedUpdate {
    at::Tensor delta_weight;
    std::optional<PerplexitySummary> perplexity_after;
  };
  std::optional<SharedUpdate> prefixed_key_edit;  // the first method here that divides by k̄
  for (EditMethod method : run_.settings.methods) {
    if (stopped_) break;
    if (done_line(record, method)) continue;
    EditOptions options = options_;
    options.scoring_cache = &scoring;
    const bool shares = uses_prefixed_key(method) && prefixed_key_edit;
    if (shares) options.perplexity_after = prefixed_key_edit->perplexity_after;
    EditOutcome outcome;
    RecordScores post;
    try {
      outcome = finish_edit(loaded_, config_for(record), prepared, method, context_, options);
      phases_.add_result(outcome.result, /*with_preparation=*/false);
      if (shares && !at::equal(outcome.delta_weight, prefixed_key_edit->delta_weight))
        throw std::logic_error("C-ROME and C-ROME-prefix updates differ for case " + std::to_string(record.case_id));
      post = score_reusing(record, scored_prompt(record, method), scoring);
    } catch (...) {
      loaded_.model->set_rewrite_weight(layer_, original_weight_);
      throw;
    }
    restore_weight(loaded_, layer_, original_weight_, "case " + std::to_string(record.case_id) + " " + to_string(method));
    if (uses_prefixed_key(method) && !prefixed_key_edit)
      prefixed_key_edit = SharedUpdate{outcome.delta_weight, outcome.perplexity_after};
    record_line(record, method, outcome, pre, post, std::nullopt);
  }
}

// Each method is its own sequence of accumulating edits, from the original weights. Edits done
// before an interruption are recomputed (not evaluated) to rebuild the model they left.
void BatchEditor::run_sequential() {
  for (EditMethod method : run_.settings.methods) {
    if (stopped_) break;
    restore_weight(loaded_, layer_, original_weight_, "the sequence of the previous method");
    int64_t step = 0;
    for (const EditRecord* record : run_.records) {
      if (stopped_) break;
      const EditConfig config = config_for(*record);
      if (const json* recorded = done_line(*record, method)) {
        EditOptions replay = options_;
        replay.evaluate = false;
        check_replayed_edit(run_edit(loaded_, config, record->request, method, context_, replay), *recorded,
                            record->case_id);
        ++step;
        continue;
      }
      const RecordScores pre = score(*record, fill_placeholder(record->request.prompt, record->request.subject));
      const EditOutcome outcome = run_edit(loaded_, config, record->request, method, context_, options_);
      phases_.add_result(outcome.result, /*with_preparation=*/true);
      const RecordScores post = score(*record, scored_prompt(*record, method));
      record_line(*record, method, outcome, pre, post, step++);
    }
  }
  restore_weight(loaded_, layer_, original_weight_, "the sequential run");
}

void BatchEditor::record_line(const EditRecord& record, EditMethod method, const EditOutcome& outcome,
                              const RecordScores& pre, const RecordScores& post, std::optional<int64_t> step) {
  json line = outcome.result;
  line.erase("context_templates");  // once per run, in run.json
  line["case_id"] = record.case_id;
  line["position"] = record.position;
  line["dataset"] = to_string(run_.dataset.format);
  if (step) line["sequence_step"] = *step;
  const json quality = edit_quality_json(pre, post);  // named: items() of a temporary would dangle
  for (const auto& item : quality.items()) line[item.key()] = item.value();
  appender_.append(line);
  ++new_edits_;
  if (line.contains("convergence"))
    for (const auto& warning : line["convergence"]["warnings"])
      std::cerr << "batch: warning: case " << record.case_id << " " << to_string(method) << ": "
                << warning.get<std::string>() << "\n";
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  const double per_edit = elapsed / double(new_edits_);
  std::cerr << "batch: " << (total_ - to_do_ + new_edits_) << "/" << total_ << " case " << record.case_id << " "
            << to_string(method) << "  efficacy " << line["efficacy"].get<double>() << "  |den| "
            << std::abs(outcome.update.denominator) << "  " << per_edit << " s/edit  ETA "
            << duration_text(per_edit * double(to_do_ - new_edits_)) << "\n";
  if (guard_.stop_requested(new_edits_, max_edits_)) stopped_ = true;
}

}  // namespace

std::vector<const EditRecord*> select_batch_records(const Dataset& dataset, const BatchSettings& settings,
                                                    const Shard& shard, const std::string& source) {
  const json& cases = settings.cases;
  const std::vector<const EditRecord*> chosen =
      cases.is_array() ? records_by_case_id(dataset, cases, source) : records_in_range(dataset, cases, source);
  std::vector<const EditRecord*> out;
  for (const EditRecord* r : chosen)
    if (r->position % shard.count == shard.index) out.push_back(r);
  return out;
}

BatchOutcome run_batch_experiment(const BatchOptions& options) {
  BatchRun run = read_batch_run(options);
  return run_batch(run, options);
}

BatchOutcome run_batch(BatchRun& run, const BatchOptions& options, LoadedModel* model) {
  // One run per directory: a second one would write every line twice.
  ResumableRun guard(run.dir / ".lock", "batch directory " + run.dir.string(), run.dir);
  BatchOutcome outcome;
  outcome.dir = run.dir;
  outcome.results_path = run.dir / "results.jsonl";
  const fs::path run_path = run.dir / "run.json";
  const std::optional<json> previous = previous_run(run, run_path);

  std::optional<LoadedModel> config_model;
  if (!model) {
    config_model.emplace(load_config_model(run.config));
    fit_to_model(run.config, *config_model);
  }
  LoadedModel& loaded = model ? *model : *config_model;
  check_edit_inputs(loaded, run.config);
  const json inputs = run_inputs(run, loaded);
  if (previous) check_same_inputs(*previous, inputs, run_path);
  drop_subjects_inside_words(run, loaded);
  std::optional<PerplexityReuse> perplexity_reuse;
  const EditContext context = batch_edit_context(run, loaded, perplexity_reuse, !options.one_by_one);
  if (!previous) write_file_atomic(run_path, json_text(run_description(run, context, loaded, inputs)) + "\n");

  std::map<std::string, json> done = finished_edits(run, outcome.results_path);
  const size_t total = run.records.size() * run.settings.methods.size();
  if (!done.empty()) std::cerr << "batch: resuming, " << done.size() << " of " << total << " edits already done\n";
  guard.watch_signals();
  BatchEditor editor(run, loaded, context, std::move(done), outcome.results_path, guard, options,
                     perplexity_reuse ? &*perplexity_reuse : nullptr);
  editor.run_all();
  outcome.seconds = editor.seconds();
  outcome.phase_seconds = editor.phase_seconds();

  for (const TableRow& row : write_tables(run.dir))
    if (row.group == "all") {
      outcome.edits += row.cases;
      outcome.not_taken += row.not_taken;
      outcome.loss_rose += row.loss_rose;
    }
  outcome.new_edits = editor.new_edits();
  if (guard.signal() != 0 || editor.stopped()) outcome.stopped_by = guard.stop_cause("--max-edits");
  outcome.exit_code = guard.stop_exit_code(0);
  return outcome;
}

}  // namespace rc
