#pragma once
// The start check and keys share: config and requests read, model loaded, templates prepared, and
// what they say on stderr about the requests, said the same way by both.
#include <string>

#include "rome_collapse/analysis/check.h"

namespace rc::cli {

// The records skipped when reading the requests (one line each, then a count), as "<command>: ...".
void print_skipped_requests(const std::string& command, const RequestSet& requests);

// Subjects merged with punctuation are read as ROME reads them, with a warning (a few shown).
void print_subject_boundary_warnings(const LoadedModel& loaded, const RequestSet& requests);

struct KeyRun {
  KeyRunSetup setup;
  LoadedModel loaded;
  KeyRunContext context;
};

// `command` ("check", "keys") starts its messages. T5 folders load as encoder-decoder models: the
// keys are its encoder MLP's.
KeyRun start_key_run(const std::string& command, const std::string& config_file, const std::string& requests_file);

}  // namespace rc::cli
