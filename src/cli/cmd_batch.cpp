// `rome-collapse batch`: the paper's tables over a dataset — one edit per (record, method), each
// from the original weights (or accumulated with "sequential"), evaluated as the paper's code does,
// appended to DIR/results.jsonl line by line so that a killed run resumes; `--shard i/n` splits a run
// over a job array and `rome-collapse merge` joins the shards.
#include <atomic>
#include <chrono>
#include <csignal>
#include <ctime>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <map>
#include <set>
#include <unistd.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "rome_collapse/eval/evaluation.h"
#include "rome_collapse/eval/perplexity.h"
#include "rome_collapse/experiment/edit_config.h"
#include "rome_collapse/experiment/tables.h"
#include "rome_collapse/io/dataset.h"
#include "rome_collapse/rome/edit.h"
#include "rome_collapse/rome/subject_boundary.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/fields.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"
#include "rome_collapse/util/run_guard.h"

namespace rc::cli {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr int kRunSchemaVersion = 1;

struct Shard {
  int64_t index = 0, count = 1;
};

Shard parse_shard(const std::string& text) {
  Shard shard;
  const size_t slash = text.find('/');
  try {
    if (slash == std::string::npos) throw std::invalid_argument("no slash");
    size_t used = 0;
    shard.index = std::stoll(text.substr(0, slash), &used);
    if (used != slash) throw std::invalid_argument("index");
    shard.count = std::stoll(text.substr(slash + 1), &used);
    if (used != text.size() - slash - 1) throw std::invalid_argument("count");
  } catch (const std::exception&) {
    throw InputError("--shard \"" + text + "\": expected i/n, e.g. 0/4");
  }
  if (shard.count < 1 || shard.index < 0 || shard.index >= shard.count)
    throw InputError("--shard \"" + text + "\": expected 0 <= i < n");
  return shard;
}

// Everything batch reads from its config beyond the edit config's own fields.
struct BatchSettings {
  fs::path dataset_path;
  DatasetFormat dataset_format = DatasetFormat::Auto;
  std::vector<EditMethod> methods;
  json cases = nullptr;  // null (all), [ids], or {"start", "stop"} (positions, stop exclusive)
  std::optional<std::vector<int64_t>> collapse_cases;
  bool sequential = false;
  EvaluationOptions evaluation;
  std::optional<TextSelection> perplexity_selection;
};

BatchSettings parse_batch_settings(const EditConfig& config, const fs::path& base_dir) {
  const json& raw = config.raw;
  const std::string& source = config.source;
  BatchSettings s;
  if (!raw.contains("dataset") || !raw["dataset"].is_object())
    throw InputError(source + ": missing field \"dataset\" ({\"path\": FILE, \"format\": \"auto\"})");
  for (const auto& item : raw["dataset"].items())
    if (item.key() != "path" && item.key() != "format")
      throw InputError(source + ": dataset: unknown field \"" + excerpt(item.key()) + "\"");
  if (!raw["dataset"].contains("path") || !raw["dataset"]["path"].is_string())
    throw InputError(source + ": dataset.path: expected a string");
  const fs::path path = raw["dataset"]["path"].get<std::string>();
  s.dataset_path = path.is_absolute() ? path : (base_dir / path).lexically_normal();
  if (raw["dataset"].contains("format")) {
    if (!raw["dataset"]["format"].is_string()) throw InputError(source + ": dataset.format: expected a string");
    s.dataset_format = parse_dataset_format(raw["dataset"]["format"].get<std::string>(), source + ": dataset.format");
  }
  if (raw.contains("methods")) {
    if (raw.contains("method")) throw InputError(source + ": give either \"method\" or \"methods\"");
    if (!raw["methods"].is_array() || raw["methods"].empty())
      throw InputError(source + ": methods: expected a non-empty list");
    for (const auto& m : raw["methods"]) {
      if (!m.is_string()) throw InputError(source + ": methods: expected strings");
      const EditMethod method = parse_method(m.get<std::string>(), source + ": methods");
      if (std::find(s.methods.begin(), s.methods.end(), method) != s.methods.end())
        throw InputError(source + ": methods: \"" + m.get<std::string>() + "\" appears twice");
      s.methods.push_back(method);
    }
  } else {
    s.methods.push_back(config.method);
  }
  if (raw.contains("cases") && !raw["cases"].is_null()) {
    const json& cases = raw["cases"];
    if (cases.is_array()) {
      for (const auto& id : cases)
        if (!id.is_number_integer()) throw InputError(source + ": cases: expected a list of integer case ids");
    } else if (cases.is_object()) {
      for (const auto& item : cases.items())
        if ((item.key() != "start" && item.key() != "stop") || !item.value().is_number_integer() ||
            item.value().get<int64_t>() < 0)
          throw InputError(source + ": cases: expected {\"start\": N, \"stop\": M} (non-negative positions, stop exclusive)");
    } else {
      throw InputError(source + ": cases: expected a list of case ids or {\"start\", \"stop\"}");
    }
    s.cases = cases;
  }
  if (raw.contains("collapse_cases") && !raw["collapse_cases"].is_null()) {
    if (!raw["collapse_cases"].is_array()) throw InputError(source + ": collapse_cases: expected a list of case ids");
    s.collapse_cases.emplace();
    for (const auto& id : raw["collapse_cases"]) {
      if (!id.is_number_integer()) throw InputError(source + ": collapse_cases: expected integer case ids");
      s.collapse_cases->push_back(id.get<int64_t>());
    }
  }
  if (raw.contains("sequential")) {
    if (!raw["sequential"].is_boolean()) throw InputError(source + ": sequential: expected true or false");
    s.sequential = raw["sequential"].get<bool>();
  }
  if (raw.contains("evaluation")) {
    const json& evaluation = raw["evaluation"];
    if (!evaluation.is_object()) throw InputError(source + ": evaluation: expected an object");
    for (const auto& item : evaluation.items()) {
      if (item.key() != "max_length") throw InputError(source + ": evaluation: unknown field \"" + excerpt(item.key()) + "\"");
      if (!item.value().is_number_integer() || item.value().get<int64_t>() < 1)
        throw InputError(source + ": evaluation.max_length: expected a positive integer");
      s.evaluation.max_length = item.value().get<int64_t>();
    }
  }
  if (config.evaluation_max_length) {
    if (raw.contains("evaluation") && raw["evaluation"].contains("max_length") &&
        raw["evaluation"]["max_length"] != *config.evaluation_max_length)
      throw InputError(source + ": hparams.max_length and evaluation.max_length differ");
    s.evaluation.max_length = *config.evaluation_max_length;
  }
  if (raw.contains("perplexity_selection")) {
    if (config.perplexity_texts.empty())
      throw InputError(source + ": perplexity_selection needs \"perplexity\": {\"texts\": FILE}");
    s.perplexity_selection = parse_text_selection(raw["perplexity_selection"], source + ": perplexity_selection");
  }
  return s;
}

// Reads the config (the schema every command shares; EasyEdit's hparams.max_length arrives as
// config.evaluation_max_length and is checked against "evaluation" by parse_batch_settings).
EditConfig read_batch_config(const fs::path& path) { return parse_edit_config(read_config_document(path)); }

std::vector<const EditRecord*> select_records(const Dataset& dataset, const json& cases, const Shard& shard,
                                              const std::string& source) {
  std::vector<const EditRecord*> chosen;
  if (cases.is_array()) {
    std::map<int64_t, const EditRecord*> by_id;
    for (const auto& r : dataset.records) by_id[r.case_id] = &r;
    std::set<int64_t> wanted;
    for (const auto& id : cases) {
      const int64_t value = id.get<int64_t>();
      if (!by_id.count(value))
        throw InputError(source + ": cases: case id " + std::to_string(value) + " is not in " + dataset.source);
      wanted.insert(value);
    }
    for (const auto& r : dataset.records)
      if (wanted.count(r.case_id)) {
        if (!r.invalid.empty()) throw InputError(r.invalid);
        chosen.push_back(&r);
      }
  } else {
    const int64_t size = static_cast<int64_t>(dataset.records.size());
    const int64_t start = cases.is_object() ? cases.value("start", int64_t{0}) : 0;
    const int64_t stop = cases.is_object() ? std::min(cases.value("stop", size), size) : size;
    if (start >= stop)
      throw InputError(source + ": cases: the range [" + std::to_string(start) + ", " + std::to_string(stop) +
                       ") selects no record of " + dataset.source + " (" + std::to_string(size) + " records)");
    for (int64_t i = start; i < stop; ++i) {
      if (dataset.records[i].invalid.empty())
        chosen.push_back(&dataset.records[i]);
      else
        std::cerr << "batch: skipping " << dataset.records[i].invalid << "\n";
    }
  }
  std::vector<const EditRecord*> out;
  for (const EditRecord* r : chosen)
    if (r->position % shard.count == shard.index) out.push_back(r);
  return out;
}

// results.jsonl, appended one complete line at a time and synced, so that a kill loses at most
// the line being written (which the next start drops).
class ResultsAppender {
 public:
  explicit ResultsAppender(const fs::path& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) fail_input(path.string(), std::string("cannot open for appending: ") + std::strerror(errno));
  }
  ~ResultsAppender() {
    if (fd_ >= 0) ::close(fd_);
  }
  ResultsAppender(const ResultsAppender&) = delete;
  ResultsAppender& operator=(const ResultsAppender&) = delete;

  void append(const json& line) {
    const std::string text = json_text(line, -1) + "\n";
    size_t written = 0;
    while (written < text.size()) {
      const ssize_t n = ::write(fd_, text.data() + written, text.size() - written);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail_input(path_.string(), std::string("write failed: ") + std::strerror(errno));
      written += static_cast<size_t>(n);
    }
    if (::fsync(fd_) != 0) fail_input(path_.string(), std::string("fsync failed: ") + std::strerror(errno));
  }

 private:
  fs::path path_;
  int fd_ = -1;
};

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

std::string pair_key(int64_t position, const std::string& method) { return std::to_string(position) + "/" + method; }

// Puts W back and proves it is bit for bit the original.
void restore_weight(LoadedModel& loaded, int64_t layer, const at::Tensor& original, const std::string& what) {
  loaded.model->set_rewrite_weight(layer, original);
  if (!at::equal(loaded.model->rewrite_weight(layer), original))
    throw std::runtime_error("rewrite weight of layer " + std::to_string(layer) + " differs from the original after " +
                             what + "; refusing to continue (later edits would start from a modified model)");
}

struct BatchRun {
  EditConfig config;
  BatchSettings settings;
  Dataset dataset;
  std::vector<const EditRecord*> records;
  Shard shard;
  fs::path dir;
};

// Every file the run's results depend on, by content: a resume into a run whose inputs changed
// would mix old and new results.
json run_inputs(const BatchRun& run, const LoadedModel& loaded) {
  std::vector<RunInput> inputs = {{"dataset", run.settings.dataset_path},
                                  {"perplexity_texts", run.config.perplexity_texts},
                                  {"model", loaded.model_path},
                                  {"tokenizer", loaded.tokenizer_path}};
  if (run.config.hparams.mom2_adjustment) inputs.push_back({"stats", run.config.hparams.stats});
  return input_fingerprint(inputs);
}

json run_description(const BatchRun& run, const EditContext& context, const LoadedModel& loaded, const json& inputs) {
  const auto& s = run.settings;
  std::vector<std::string> methods;
  for (EditMethod m : s.methods) methods.push_back(to_string(m));
  std::vector<int64_t> positions;
  for (const EditRecord* r : run.records) positions.push_back(r->position);
  json config = {{"methods", methods},
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
  return {{"schema_version", kRunSchemaVersion},
          {"tool", "rome-collapse"},
          {"version", ROME_COLLAPSE_VERSION},
          {"started_utc", utc_now_text()},
          {"config_source", run.config.source},
          {"config_sha256", run.config.config_sha256},
          {"inputs", inputs},
          {"config", config},
          {"shard", {{"index", run.shard.index}, {"count", run.shard.count}}},
          {"positions", positions},
          {"context_templates", context.templates},
          {"template_source", run.config.templates.generate ? "generated" : "fixed"},
          {"perplexity_before", context.perplexity_before ? to_json(*context.perplexity_before, false) : json(nullptr)},
          {"provenance",
           {{"model", loaded.model_path},
            {"architecture", to_string(loaded.model->config().arch)},
            {"tokenizer", loaded.tokenizer_path},
            {"tokenizer_files", tokenizer_files_provenance(*loaded.tokenizer)},
            {"add_bos", loaded.add_bos},
            {"device", run.config.device},
            {"dtype", run.config.dtype},
            {"hparams", fields_to_json(run.config.hparams)},
            {"hparams_source", run.config.hparams_source}}}};
}

// The (position/method) pairs results.jsonl already holds; a line of another selection, a pair
// written twice or a line without its keys is an error, never silently counted.
std::map<std::string, json> finished_pairs(const ResultsFile& existing, const std::vector<const EditRecord*>& records,
                                           const fs::path& results_path) {
  std::map<int64_t, const EditRecord*> by_position;
  for (const EditRecord* r : records) by_position[r->position] = r;
  std::map<std::string, json> done;
  for (size_t i = 0; i < existing.lines.size(); ++i) {
    const json& line = existing.lines[i];
    const std::string where = results_path.string() + ": line " + std::to_string(i + 1);
    int64_t position = 0, case_id = 0;
    std::string method;
    try {
      position = line.at("position").get<int64_t>();
      case_id = line.at("case_id").get<int64_t>();
      method = line.at("method").get<std::string>();
    } catch (const json::exception&) {
      throw InputError(where + ": expected integer \"position\" and \"case_id\" and a string \"method\"");
    }
    if (!by_position.count(position) || by_position[position]->case_id != case_id)
      throw InputError(where + ": the line for case " + std::to_string(case_id) + " at position " +
                       std::to_string(position) + " does not belong to this run's selection");
    if (!done.emplace(pair_key(position, method), line).second)
      throw InputError(where + ": case " + std::to_string(case_id) + " (" + excerpt(method) +
                       ") appears twice (two runs wrote into this directory at once?); remove the repeated lines "
                       "or start again in a new --out directory");
  }
  return done;
}

// A resume must see the files the run started with; a run.json from before fingerprints is let
// through with a note (only its config hash can be compared).
void check_same_inputs(const json& previous, const json& inputs, const fs::path& run_path) {
  if (!previous.contains("inputs")) {
    std::cerr << "batch: note: " << run_path.string() << " records no input fingerprint (an older run); "
              << "only its config is checked\n";
    return;
  }
  const std::vector<std::string> differences = fingerprint_differences(previous["inputs"], inputs);
  if (differences.empty()) return;
  std::string list;
  for (const std::string& line : differences) list += "\n  " + line;
  fail_input(run_path.string(), "the inputs changed since this run started, resuming would mix old and new results:" +
                                    list + "\nrestore them, or use a new --out directory");
}

json read_run_json(const fs::path& path) {
  return parse_json(read_file(path), path.string(), "malformed JSON");
}

}  // namespace

int run_batch(const BatchArgs& args) {
  BatchRun run;
  const fs::path config_path = args.config;
  run.config = read_batch_config(config_path);
  run.settings = parse_batch_settings(run.config, config_path.parent_path().empty() ? "." : config_path.parent_path());
  run.shard = args.shard.empty() ? Shard{} : parse_shard(args.shard);
  if (run.settings.sequential && run.shard.count > 1)
    throw InputError("--shard: a sequential run edits one model in order and cannot be split into shards");
  run.dataset = read_dataset(run.settings.dataset_path, run.settings.dataset_format);
  run.records = select_records(run.dataset, run.settings.cases, run.shard, run.config.source);
  run.dir = args.out.empty() ? fs::path("batch-" + config_path.stem().string()) : fs::path(args.out);
  std::error_code dir_error;
  fs::create_directories(run.dir, dir_error);
  if (dir_error) fail_input(run.dir.string(), "cannot create the result directory: " + dir_error.message());
  // One run per directory: a second one would write every line twice.
  const RunLock lock(run.dir / ".lock", "batch directory " + run.dir.string());
  remove_stale_temporaries(run.dir);
  const fs::path run_path = run.dir / "run.json", results_path = run.dir / "results.jsonl";

  // Resuming: the same config (by hash) and shard; the recorded templates are reused as they are.
  std::optional<json> previous;
  if (fs::exists(run_path)) {
    previous = read_run_json(run_path);
    if (previous->value("config_sha256", "") != run.config.config_sha256)
      throw InputError(run_path.string() + ": this directory holds a run of another config (config_sha256 differs); "
                       "use a new --out directory");
    const json shard = {{"index", run.shard.index}, {"count", run.shard.count}};
    if ((*previous)["shard"] != shard)
      throw InputError(run_path.string() + ": this directory holds shard " + json_excerpt((*previous)["shard"]) +
                       ", not --shard " + std::to_string(run.shard.index) + "/" + std::to_string(run.shard.count));
    run.config.templates.generate = false;
    run.config.templates.fixed = (*previous)["context_templates"].get<std::vector<std::string>>();
  }

  LoadedModel loaded = load_config_model(run.config);
  fit_to_model(run.config, loaded);
  check_edit_inputs(loaded, run.config);
  const json inputs = run_inputs(run, loaded);
  if (previous) check_same_inputs(*previous, inputs, run_path);
  // A subject that ends inside a word is skipped with its tokens shown, not edited.
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
  EditConfig context_config = run.config;
  if (run.settings.perplexity_selection) context_config.perplexity_texts.clear();
  EditContext context = prepare_edit_context(loaded, context_config);
  if (run.settings.perplexity_selection) {
    const auto texts = select_texts(read_file(run.config.perplexity_texts), *run.settings.perplexity_selection);
    if (texts.empty()) fail_input(run.config.perplexity_texts, "perplexity_selection keeps no text");
    context.perplexity_ids = perplexity_token_ids(*loaded.tokenizer, texts, loaded.model->config().max_positions);
    context.perplexity_before = perplexity(*loaded.model, context.perplexity_ids, run.config.perplexity_batch_size);
  }
  if (!previous) write_file_atomic(run_path, json_text(run_description(run, context, loaded, inputs)) + "\n");

  // What is already done; a line cut off by a kill is dropped from the file before appending.
  ResultsFile existing = read_results_file(results_path);
  if (existing.dropped_partial_line) {
    fs::resize_file(results_path, existing.complete_bytes);
    std::cerr << "batch: dropped an incomplete last line of " << results_path.string() << " (an interrupted write)\n";
  }
  const std::map<std::string, json> done = finished_pairs(existing, run.records, results_path);

  const int64_t layer = run.config.hparams.layer;
  const at::Tensor original_weight = loaded.model->rewrite_weight(layer).clone();
  const int64_t total = static_cast<int64_t>(run.records.size() * run.settings.methods.size());
  const int64_t to_do = total - static_cast<int64_t>(done.size());
  if (!done.empty()) std::cerr << "batch: resuming, " << done.size() << " of " << total << " edits already done\n";
  const StopSignalScope signals;

  ResultsAppender appender(results_path);
  const auto started = std::chrono::steady_clock::now();
  int64_t new_edits = 0;
  bool stopped = false;

  auto record_line = [&](const EditRecord& record, EditMethod method, EditOutcome& outcome, const RecordScores& pre,
                         const RecordScores& post, std::optional<int64_t> step) {
    json line = outcome.result;
    line.erase("context_templates");  // once per run, in run.json
    line["case_id"] = record.case_id;
    line["position"] = record.position;
    line["dataset"] = to_string(run.dataset.format);
    if (step) line["sequence_step"] = *step;
    const json quality = edit_quality_json(pre, post);  // named: items() of a temporary would dangle
    for (const auto& item : quality.items()) line[item.key()] = item.value();
    appender.append(line);
    ++new_edits;
    if (line.contains("convergence"))
      for (const auto& warning : line["convergence"]["warnings"])
        std::cerr << "batch: warning: case " << record.case_id << " " << to_string(method) << ": "
                  << warning.get<std::string>() << "\n";
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double per_edit = elapsed / double(new_edits);
    std::cerr << "batch: " << (total - to_do + new_edits) << "/" << total << " case " << record.case_id << " "
              << to_string(method) << "  efficacy " << line["efficacy"].get<double>() << "  |den| "
              << std::abs(outcome.update.denominator) << "  " << per_edit << " s/edit  ETA "
              << duration_text(per_edit * double(to_do - new_edits)) << "\n";
    if (StopSignalScope::received() != 0 || (args.max_edits > 0 && new_edits >= args.max_edits)) stopped = true;
  };

  auto edit_config_for = [&](const EditRecord& record) {
    EditConfig config = run.config;
    config.prefix_index = record.position;  // c-rome-prefix: context_templates[1 + position % 20] at test time
    return config;
  };

  EditOptions options;
  options.keep_update = true;  // W is restored (and checked) here, after the post-edit evaluation
  if (!run.settings.sequential) {
    for (const EditRecord* record : run.records) {
      std::optional<RecordScores> pre;  // the unedited model's scores, shared by the methods
      for (EditMethod method : run.settings.methods) {
        if (stopped) break;
        if (done.count(pair_key(record->position, to_string(method)))) continue;
        const std::string bare = fill_placeholder(record->request.prompt, record->request.subject);
        if (!pre) pre = score_record(loaded, *record, bare, run.settings.evaluation);
        const EditConfig config = edit_config_for(*record);
        const std::string scored_prompt = efficacy_prompt(record->request, method, context.templates, record->position);
        EditOutcome outcome;
        RecordScores post;
        try {
          outcome = run_edit(loaded, config, record->request, method, context, options);
          post = score_record(loaded, *record, scored_prompt, run.settings.evaluation);
        } catch (...) {
          loaded.model->set_rewrite_weight(layer, original_weight);
          throw;
        }
        restore_weight(loaded, layer, original_weight, "case " + std::to_string(record->case_id) + " " + to_string(method));
        record_line(*record, method, outcome, *pre, post, std::nullopt);
      }
      if (stopped) break;
    }
  } else {
    // Each method is its own sequence of accumulating edits, from the original weights. Edits done
    // before an interruption are recomputed (not evaluated) to rebuild the model they left.
    for (EditMethod method : run.settings.methods) {
      if (stopped) break;
      restore_weight(loaded, layer, original_weight, "the sequence of the previous method");
      int64_t step = 0;
      for (const EditRecord* record : run.records) {
        if (stopped) break;
        const EditConfig config = edit_config_for(*record);
        const std::string bare = fill_placeholder(record->request.prompt, record->request.subject);
        const auto previous_line = done.find(pair_key(record->position, to_string(method)));
        if (previous_line != done.end()) {
          EditOptions replay = options;
          replay.evaluate = false;
          const EditOutcome outcome = run_edit(loaded, config, record->request, method, context, replay);
          const double recorded = previous_line->second.at("update_norm").get<double>();
          if (std::abs(outcome.update.update_norm - recorded) > 1e-6 * std::max(1.0, std::abs(recorded)))
            throw std::runtime_error("sequential resume: replaying case " + std::to_string(record->case_id) +
                                     " gives ||dW|| " + std::to_string(outcome.update.update_norm) + ", the run recorded " +
                                     std::to_string(recorded) + "; start the run afresh in a new directory");
          ++step;
          continue;
        }
        const std::string scored_prompt = efficacy_prompt(record->request, method, context.templates, record->position);
        const RecordScores pre = score_record(loaded, *record, bare, run.settings.evaluation);
        EditOutcome outcome = run_edit(loaded, config, record->request, method, context, options);
        const RecordScores post = score_record(loaded, *record, scored_prompt, run.settings.evaluation);
        record_line(*record, method, outcome, pre, post, step++);
      }
    }
    restore_weight(loaded, layer, original_weight, "the sequential run");
  }

  int64_t edits = 0, not_taken = 0, loss_rose = 0;
  for (const TableRow& row : write_tables(run.dir))
    if (row.group == "all") {
      edits += row.cases;
      not_taken += row.not_taken;
      loss_rose += row.loss_rose;
    }
  if (not_taken > 0 || loss_rose > 0)
    std::cerr << "batch: warning: " << not_taken << " of " << edits << " edits did not take and " << loss_rose
              << " had a rising v* loss (columns \"not taken\" and \"loss rose\" of tables.md)\n";
  if (const int signal = StopSignalScope::received(); signal != 0) {
    std::cerr << "batch: stopped by " << StopSignalScope::name(signal) << " after " << new_edits
              << " new edits; " << results_path.string() << " is complete up to there. Run the same command to continue.\n";
    return 128 + signal;
  }
  if (stopped) {
    std::cerr << "batch: stopped after " << new_edits << " edits (--max-edits); run the same command to continue\n";
    return kOk;
  }
  std::cout << read_file(run.dir / "tables.md");
  std::cout << "results in " << run.dir.string() << " (results.jsonl, tables.md, tables.csv, summary.json, run.json)\n";
  return kOk;
}

int run_merge(const MergeArgs& args) {
  if (args.dirs.empty()) throw InputError("merge: name at least one batch directory");
  json first_run;
  std::map<std::string, json> lines;
  std::set<int64_t> positions;
  json merged_from = json::array();
  std::vector<std::string> methods;
  for (size_t i = 0; i < args.dirs.size(); ++i) {
    const fs::path dir = args.dirs[i];
    const json run = read_run_json(dir / "run.json");
    if (i == 0) {
      first_run = run;
      methods = table_settings_from_run(run, (dir / "run.json").string()).methods;
    } else {
      if (run.value("config_sha256", "") != first_run.value("config_sha256", ""))
        throw InputError((dir / "run.json").string() + ": a run of another config than " + args.dirs[0] +
                         " (config_sha256 differs)");
      if (run["context_templates"] != first_run["context_templates"])
        throw InputError((dir / "run.json").string() + ": context_templates differ from those of " + args.dirs[0] +
                         "; shards must share the templates (give them in the config, or copy run.json's)");
    }
    merged_from.push_back({{"dir", dir.string()}, {"shard", run["shard"]}});
    for (const auto& p : run["positions"]) positions.insert(p.get<int64_t>());
    const ResultsFile results = read_results_file(dir / "results.jsonl");
    if (results.dropped_partial_line)
      std::cerr << "merge: ignoring an incomplete last line of " << (dir / "results.jsonl").string() << "\n";
    for (const auto& line : results.lines) {
      const std::string key = pair_key(line.at("position").get<int64_t>(), line.at("method").get<std::string>());
      auto [it, inserted] = lines.emplace(key, line);
      if (!inserted && (it->second["update_norm"] != line["update_norm"] || it->second["efficacy"] != line["efficacy"]))
        throw InputError((dir / "results.jsonl").string() + ": case at position " + key +
                         " also appears, with other values, in an earlier directory");
    }
  }
  std::vector<json> ordered;
  for (auto& [key, line] : lines) ordered.push_back(line);
  auto rank = [&](const json& line) {
    return std::find(methods.begin(), methods.end(), line["method"].get<std::string>()) - methods.begin();
  };
  std::stable_sort(ordered.begin(), ordered.end(), [&](const json& a, const json& b) {
    const auto pa = a["position"].get<int64_t>(), pb = b["position"].get<int64_t>();
    return pa != pb ? pa < pb : rank(a) < rank(b);
  });
  const size_t expected = positions.size() * methods.size();
  if (ordered.size() < expected)
    std::cerr << "merge: " << ordered.size() << " of " << expected
              << " (case, method) results present; the tables cover those only (resume the shards to complete them)\n";
  std::string text;
  for (const auto& line : ordered) text += json_text(line, -1) + "\n";
  const fs::path out = args.out;
  std::error_code dir_error;
  fs::create_directories(out, dir_error);
  if (dir_error) fail_input(out.string(), "cannot create the result directory: " + dir_error.message());
  const RunLock lock(out / ".lock", "batch directory " + out.string());
  json run = first_run;
  run["shard"] = {{"index", 0}, {"count", 1}};
  run["positions"] = std::vector<int64_t>(positions.begin(), positions.end());
  run["merged_from"] = merged_from;
  write_file_atomic(out / "run.json", json_text(run) + "\n");
  write_file_atomic(out / "results.jsonl", text);
  write_tables(out);
  std::cout << read_file(out / "tables.md");
  std::cout << "merged " << ordered.size() << " results from " << args.dirs.size() << " directories into " << out.string()
            << "\n";
  return kOk;
}

}  // namespace rc::cli
