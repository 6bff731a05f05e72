// `rome-collapse check`: the collapse guard. Keys and denominators only; exit 1 when a request's
// ROME denominator is too small (absolutely or against C-ROME's), so CI can guard a set of edits.
#include <iostream>

#include "commands.h"
#include "key_run_notes.h"
#include "rome_collapse/analysis/check.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc::cli {

int run_check_command(const CheckArgs& args) {
  const CheckThresholds& thresholds = args.thresholds;
  if (!(thresholds.min_abs_denominator >= 0)) throw InputError("--min-abs-denominator: expected a non-negative number");
  if (!(thresholds.min_ratio >= 0)) throw InputError("--min-ratio: expected a non-negative number");
  KeyRun run = start_key_run("check", args.config, args.requests);
  const KeyRunSetup& setup = run.setup;
  const EditConfig& config = setup.config;
  LoadedModel& loaded = run.loaded;
  const KeyRunContext& context = run.context;
  ProgressReporter progress("check", static_cast<int64_t>(setup.requests.requests.size() * context.templates.size()),
                            "prompts");
  CheckReport report = run_check(loaded, config, setup.requests, context, thresholds, &progress);
  if (!args.json.empty()) write_file_atomic(args.json, json_text(to_json(report, loaded, config, setup.requests)) + "\n");
  std::cout << format_check_table(report);
  if (!args.json.empty()) std::cout << "report written to " << args.json << "\n";
  return report.all_passed() ? kOk : kCheckFailed;
}

}  // namespace rc::cli
