#pragma once
// The paper's tables over a dataset: one edit per (record, method), each from the original weights
// (checked bit for bit after every edit) or accumulated with "sequential", evaluated as the paper's
// code does and appended to DIR/results.jsonl line by line (journal.h), so that a stopped or
// killed run resumes where it was; a sequential resume replays the recorded edits and checks that
// they give the recorded ||dW||. A run split with --shard is joined by merge_batch_runs.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace rc {

struct BatchOptions {
  std::filesystem::path config;  // the batch config (batch_config.h)
  std::filesystem::path out;     // result directory; empty: batch-<config stem>
  std::string shard;             // "i/n"; empty: the whole run
  int64_t max_edits = 0;         // > 0: stop after this many new edits (resume later)
};

struct BatchOutcome {
  std::filesystem::path dir, results_path;
  int64_t new_edits = 0;
  std::string stopped_by;  // empty: ran to its end; else "SIGINT", "SIGTERM" or "--max-edits"
  int exit_code = 0;       // 0, or 128 + the signal that stopped it
  int64_t edits = 0, not_taken = 0, loss_rose = 0;  // over the tables' "all" rows
};

// Runs (or resumes) a batch into its directory and writes the tables. Progress, skipped records
// and convergence warnings go to stderr; InputError for bad input, naming the file and field.
BatchOutcome run_batch_experiment(const BatchOptions& options);

// Joins the result directories of a run's shards into `out` (run.json, results.jsonl, tables);
// returns how many (case, method) results it holds. Shards of other configs or templates are an
// InputError; missing results are a note on stderr.
size_t merge_batch_runs(const std::vector<std::filesystem::path>& dirs, const std::filesystem::path& out);

}  // namespace rc
