#pragma once
// Settings files in the two notations researchers bring: JSON, and YAML (EasyEdit's hparams),
// read into one JSON value so that a single schema checks both.
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace rc {

// YAML text (one document) as JSON. Plain scalars are typed by YAML 1.2's core schema (null,
// true/false, integers, floats such as 5e-1); quoted scalars stay strings. Anchors and
// aliases are resolved by the parser; non-finite numbers (.inf, .nan) and non-string
// mapping keys are refused. InputError naming `source` and the line.
nlohmann::json parse_yaml(const std::string& text, const std::string& source);

// A .yaml / .yml file through parse_yaml, anything else as JSON; InputError naming the file.
nlohmann::json read_json_or_yaml(const std::filesystem::path& path);

}  // namespace rc
