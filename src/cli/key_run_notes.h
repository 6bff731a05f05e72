#pragma once
// What check and keys say on stderr about the requests they read, said the same way by both.
#include <string>

#include "rome_collapse/analysis/check.h"

namespace rc::cli {

// The records skipped when reading the requests (one line each, then a count), as "<command>: ...".
void print_skipped_requests(const std::string& command, const RequestSet& requests);

// Subjects merged with punctuation are read as ROME reads them, with a warning (a few shown).
void print_subject_boundary_warnings(const LoadedModel& loaded, const RequestSet& requests);

}  // namespace rc::cli
