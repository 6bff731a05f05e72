#pragma once
// An edit request: "{} is a citizen of" + subject "Leonardo" -> target_new "Japan".
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/util/error.h"

namespace rc {

struct EditRequest {
  std::string prompt;       // contains exactly one "{}" where the subject goes
  std::string subject;
  std::string target_new;
  std::string target_true;  // may be empty (no true-target metrics then)
};

// A well-formed request that cannot be edited (empty subject or target, the subject not in the
// prompt): a record a request file may skip, unlike a malformed one.
struct UnusableRequest : InputError {
  using InputError::InputError;
};

// Validates and normalises: a prompt without "{}" that contains the subject literally gets its
// first occurrence replaced by "{}". `where` names the source for errors ("config.json: request").
// UnusableRequest for what the request says, InputError for how it is written.
EditRequest normalize_request(EditRequest request, const std::string& where);

// Parses {"prompt", "subject", "target_new", "target_true"}; target_* may be strings or
// ROME's {"str": ...} objects. Unknown fields are errors.
EditRequest parse_request(const nlohmann::json& json, const std::string& where);
nlohmann::json to_json(const EditRequest& request);

// First "{}" of `text` replaced by `value` (Python's str.format for the one-placeholder case,
// without choking on other braces).
std::string fill_placeholder(const std::string& text, const std::string& value);

}  // namespace rc
