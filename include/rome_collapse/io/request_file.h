#pragma once
// Request sets for the commands that look at many requests without editing (check, keys):
// a request file in one of the common layouts, or the config's own "request" / "requests".
//   - a JSON list (or JSON Lines) of {"prompt", "subject", "target_new", "target_true"}
//   - CounterFact as ROME ships it: {"case_id", "requested_rewrite": {...}, "paraphrase_prompts", ...}
//   - EasyEdit: {"prompt" (subject written out), "subject", "target_new", "ground_truth", ...}
//   - ZsRE (ROME / EasyEdit): {"subject", "src", "alt", "answers", ...}
// Every layout is read by io/dataset.h's one reader per format (parse_edit_record), named by its one
// enum (DatasetFormat); only the fields that define the edit are kept here, so a dataset file can be
// checked as it is.
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/io/dataset.h"
#include "rome_collapse/io/request.h"

namespace rc {

struct RequestSet {
  std::vector<EditRequest> requests;
  std::vector<nlohmann::json> ids;  // case_id where the record has one, else the record's index
  std::string source;               // file (or config) read from
  DatasetFormat format = DatasetFormat::Requests;  // the layout the records were read as
  std::vector<std::string> skipped;  // why each skipped record was skipped (names file and record)
};

// Reads a request file; InputError naming the file and the record index for anything malformed
// (not JSON, an empty list, a record of no known layout, a misspelt field). A well-formed record
// that cannot be edited (empty target, the subject not in the prompt) is skipped and listed in
// `skipped`; a file with no usable record is an InputError.
RequestSet read_request_file(const std::filesystem::path& path);

// One record in any of the layouts above; `where` names it in errors.
EditRequest parse_request_record(const nlohmann::json& record, const std::string& where, DatasetFormat* format = nullptr);

// The requests a config names itself: "requests" (a list) or "request"; InputError when it has neither.
RequestSet requests_from_config_json(const nlohmann::json& config, const std::string& source);

}  // namespace rc
