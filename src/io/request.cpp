#include "rome_collapse/io/request.h"

#include <nlohmann/json.hpp>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/limits.h"

namespace rc {

std::string fill_placeholder(const std::string& text, const std::string& value) {
  const size_t at = text.find("{}");
  if (at == std::string::npos) return text;
  return text.substr(0, at) + value + text.substr(at + 2);
}

EditRequest normalize_request(EditRequest request, const std::string& where) {
  check_text_size(request.prompt, where + ".prompt");
  check_text_size(request.subject, where + ".subject");
  check_text_size(request.target_new, where + ".target_new");
  check_text_size(request.target_true, where + ".target_true");
  if (request.subject.empty()) throw UnusableRequest(where + ".subject: empty subject");
  if (request.target_new.empty()) throw UnusableRequest(where + ".target_new: empty target");
  const size_t placeholder = request.prompt.find("{}");
  if (placeholder == std::string::npos) {
    const size_t at = request.prompt.find(request.subject);
    if (at == std::string::npos)
      throw UnusableRequest(where + ".prompt: the subject \"" + excerpt(request.subject) + "\" is not in the prompt \"" +
                            excerpt(request.prompt, 200) + "\" (and the prompt has no \"{}\")");
    request.prompt = request.prompt.substr(0, at) + "{}" + request.prompt.substr(at + request.subject.size());
  } else if (request.prompt.find("{}", placeholder + 2) != std::string::npos) {
    throw UnusableRequest(where + ".prompt: more than one \"{}\" in \"" + excerpt(request.prompt, 200) + "\"");
  }
  return request;
}

EditRequest parse_request(const nlohmann::json& json, const std::string& where) {
  if (!json.is_object()) throw InputError(where + ": expected an object");
  EditRequest request;
  auto text = [&](const char* key, bool required) -> std::string {
    if (!json.contains(key)) {
      if (required) throw InputError(where + "." + key + ": missing");
      return "";
    }
    const auto& value = json[key];
    if (value.is_string()) return value.get<std::string>();
    if (value.is_object() && value.contains("str") && value["str"].is_string()) return value["str"].get<std::string>();
    throw InputError(where + "." + key + ": expected a string");
  };
  for (const auto& item : json.items()) {
    const std::string& key = item.key();
    if (key != "prompt" && key != "subject" && key != "target_new" && key != "target_true" && key != "case_id")
      throw InputError(where + ": unknown field \"" + excerpt(key) + "\"");
  }
  request.prompt = text("prompt", true);
  request.subject = text("subject", true);
  request.target_new = text("target_new", true);
  request.target_true = text("target_true", false);
  return normalize_request(request, where);
}

nlohmann::json to_json(const EditRequest& request) {
  return {{"prompt", request.prompt},
          {"subject", request.subject},
          {"target_new", request.target_new},
          {"target_true", request.target_true}};
}

}  // namespace rc
