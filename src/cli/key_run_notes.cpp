#include "key_run_notes.h"

#include <algorithm>
#include <iostream>

#include "rome_collapse/rome/subject_boundary.h"

namespace rc::cli {

void print_skipped_requests(const std::string& command, const RequestSet& requests) {
  for (const auto& why : requests.skipped) std::cerr << command << ": skipping " << why << "\n";
  if (!requests.skipped.empty())
    std::cerr << command << ": skipped " << requests.skipped.size() << " of "
              << requests.skipped.size() + requests.requests.size() << " records of " << requests.source << "\n";
}

void print_subject_boundary_warnings(const LoadedModel& loaded, const RequestSet& requests) {
  const auto warnings =
      subject_boundary_warnings(*loaded.tokenizer, loaded.add_bos, requests.requests, requests.ids, requests.source);
  for (size_t i = 0; i < std::min<size_t>(warnings.size(), 5); ++i) std::cerr << "warning: " << warnings[i] << "\n";
  if (warnings.size() > 5) std::cerr << "warning: ... and " << warnings.size() - 5 << " more such subjects\n";
}

KeyRun start_key_run(const std::string& command, const std::string& config_file, const std::string& requests_file) {
  KeyRun run;
  run.setup = read_key_run_setup(config_file, requests_file);
  print_skipped_requests(command, run.setup.requests);
  const EditConfig& config = run.setup.config;
  run.loaded = load_key_model(config.model, config.tokenizer, config.add_bos, config.device, config.dtype);
  run.context = prepare_key_run(run.loaded, config);
  print_subject_boundary_warnings(run.loaded, run.setup.requests);
  return run;
}

}  // namespace rc::cli
