#pragma once
// The paper's tables over a dataset: one edit per (record, method), each from the original weights
// (checked bit for bit after every edit) or accumulated with "sequential", evaluated as the paper's
// code does and appended to DIR/results.jsonl line by line (journal.h), so that a stopped or
// killed run resumes where it was; a sequential resume replays the recorded edits and checks that
// they give the recorded ||dW||. A run split with --shard is joined by merge_batch_runs.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "rome_collapse/experiment/batch_config.h"
#include "rome_collapse/io/dataset.h"
#include "rome_collapse/model/loaded_model.h"
#include "rome_collapse/rome/edit.h"

namespace rc {

struct BatchOptions {
  std::filesystem::path config;  // the batch config (batch_config.h)
  std::filesystem::path out;     // result directory; empty: batch-<config stem>
  std::string shard;             // "i/n"; empty: the whole run
  int64_t max_edits = 0;         // > 0: stop after this many new edits (resume later)
  // Today's path before issue 19, kept for comparison (bench): each edit alone (its own v*, also
  // for methods that share it) and every evaluation pass from the first layer.
  bool one_by_one = false;
};

struct BatchOutcome {
  std::filesystem::path dir, results_path;
  int64_t new_edits = 0;
  std::string stopped_by;  // empty: ran to its end; else "SIGINT", "SIGTERM" or "--max-edits"
  int exit_code = 0;       // 0, or 128 + the signal that stopped it
  int64_t edits = 0, not_taken = 0, loss_rose = 0;  // over the tables' "all" rows
  double seconds = 0;                                // the edits' wall time (after loading and the unedited passes)
  std::map<std::string, double> phase_seconds;       // keys, value_optimisation, update, perplexity, evaluation, other
};

// A run's inputs, read from its config (or built in code: bench).
struct BatchRun {
  EditConfig config;
  BatchSettings settings;
  Dataset dataset;
  std::vector<const EditRecord*> records;
  Shard shard;
  std::filesystem::path dir;
  bool fingerprint_model = true;  // false: the model is not a file (bench's random weights)
};
// The records of `dataset` that `settings.cases` selects (all shards).
std::vector<const EditRecord*> select_batch_records(const Dataset& dataset, const BatchSettings& settings,
                                                    const Shard& shard, const std::string& source);

// Runs (or resumes) `run` into run.dir (options.config/out/shard are not read again) on `model`, or
// on the config's model (loaded after the directory's lock and run checks) when null.
BatchOutcome run_batch(BatchRun& run, const BatchOptions& options, LoadedModel* model = nullptr);

// Runs (or resumes) a batch into its directory and writes the tables. Progress, skipped records
// and convergence warnings go to stderr; InputError for bad input, naming the file and field.
BatchOutcome run_batch_experiment(const BatchOptions& options);

// Joins the result directories of a run's shards into `out` (run.json, results.jsonl, tables);
// returns how many (case, method) results it holds. Shards of other configs or templates are an
// InputError; missing results are a note on stderr.
size_t merge_batch_runs(const std::vector<std::filesystem::path>& dirs, const std::filesystem::path& out);

}  // namespace rc
