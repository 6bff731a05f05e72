// `rome-collapse keys`: dumps the keys behind the collapse to .npz and runs the first-token
// experiment (position shift vs real prefix), with a PCA projection for the figures.
#include <iostream>

#include "commands.h"
#include "key_run_notes.h"
#include "rome_collapse/analysis/key_analysis.h"
#include "rome_collapse/io/npz.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/progress.h"

namespace rc::cli {

int run_keys_command(const KeysArgs& args) {
  KeyAnalysisOptions options = args.options;
  for (int64_t k : options.prefix_tokens)
    if (k < 1) throw InputError("--prefix-tokens: expected positive token counts, got " + std::to_string(k));
  KeyRun run = start_key_run("keys", args.config, args.requests);
  const KeyRunSetup& setup = run.setup;
  const EditConfig& config = setup.config;
  LoadedModel& loaded = run.loaded;
  const KeyRunContext& context = run.context;
  ProgressReporter progress("keys", 0, "prompts");
  options.progress = &progress;
  KeyAnalysis analysis = analyze_keys(loaded, config, setup.requests, context, options);
  // Both outputs are built before either is written, each atomically.
  const auto members = npz_members(analysis);
  const std::string json = args.json.empty() ? std::string() : json_text(to_json(analysis, loaded, config, setup.requests));
  write_npz(args.out, members);
  if (!args.json.empty()) write_file_atomic(args.json, json + "\n");
  std::cout << format_key_summary(analysis);
  std::cout << "keys written to " << args.out << (args.json.empty() ? "" : " and analysis to " + args.json) << "\n";
  return kOk;
}

}  // namespace rc::cli
