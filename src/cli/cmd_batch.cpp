// `rome-collapse batch` and `merge`: parse, call experiment/batch.h, print.
#include <iostream>

#include "commands.h"
#include "rome_collapse/experiment/batch.h"
#include "rome_collapse/util/files.h"

namespace rc::cli {

int run_batch(const BatchArgs& args) {
  BatchOptions options;
  options.config = args.config;
  options.out = args.out;
  options.shard = args.shard;
  options.max_edits = args.max_edits;
  options.one_by_one = args.one_by_one;
  const BatchOutcome outcome = run_batch_experiment(options);
  if (outcome.not_taken > 0 || outcome.loss_rose > 0)
    std::cerr << "batch: warning: " << outcome.not_taken << " of " << outcome.edits << " edits did not take and "
              << outcome.loss_rose << " had a rising v* loss (columns \"not taken\" and \"loss rose\" of tables.md)\n";
  if (outcome.stopped_by == "--max-edits") {
    std::cerr << "batch: stopped after " << outcome.new_edits << " edits (--max-edits); run the same command to continue\n";
    return outcome.exit_code;
  }
  if (!outcome.stopped_by.empty()) {
    std::cerr << "batch: stopped by " << outcome.stopped_by << " after " << outcome.new_edits << " new edits; "
              << outcome.results_path.string() << " is complete up to there. Run the same command to continue.\n";
    return outcome.exit_code;
  }
  std::cout << read_file(outcome.dir / "tables.md");
  std::cout << "results in " << outcome.dir.string() << " (results.jsonl, tables.md, tables.csv, summary.json, run.json)\n";
  return kOk;
}

int run_merge(const MergeArgs& args) {
  const std::vector<std::filesystem::path> dirs(args.dirs.begin(), args.dirs.end());
  const size_t results = merge_batch_runs(dirs, args.out);
  std::cout << read_file(std::filesystem::path(args.out) / "tables.md");
  std::cout << "merged " << results << " results from " << args.dirs.size() << " directories into " << args.out << "\n";
  return kOk;
}

}  // namespace rc::cli
