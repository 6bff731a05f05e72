#pragma once
// Context templates: T[0] = "{}" (the bare prompt), T[1..] = "<generated text>. {}".
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/model/loaded_model.h"

namespace rc {

struct TemplateGeneration {
  std::vector<std::string> seed_words = {"The", "Therefore", "Because", "I", "You"};
  // (length in tokens including the seed word and any BOS, number of samples)
  std::vector<std::pair<int64_t, int64_t>> lengths = {{5, 10}, {10, 10}};
  int64_t top_k = 5;
  uint64_t seed = 0;
};

// The paper's generator: for each (length, n) draw n / |seed words| samples per seed word with
// top-k sampling from the unedited model; "{" and "}" are removed and ". {}" appended.
// One seeded generator for the whole run, so the same seed gives the same templates.
std::vector<std::string> generate_context_templates(const LoadedModel& loaded, const TemplateGeneration& generation);

// Each template holds exactly one "{}" and the first is "{}". InputError naming `where`.
void validate_templates(const std::vector<std::string>& templates, const std::string& where);

// 21 fixed templates shaped like the paper's generated ones ("{}", then 10 short and 10 longer
// "<text>. {}" prefixes from its five seed words), for runs that must not depend on generation
// (bench, tests).
const std::vector<std::string>& fixed_example_templates();

// {"generate": {...}} or a list of strings.
struct TemplateSpec {
  std::vector<std::string> fixed;
  bool generate = false;
  TemplateGeneration generation;
};
TemplateSpec parse_template_spec(const nlohmann::json& json, const std::string& where);
std::vector<std::string> resolve_templates(const LoadedModel& loaded, const TemplateSpec& spec);

}  // namespace rc
