#include "rome_collapse/util/structured_file.h"

#include <cmath>
#include <regex>

#include <yaml-cpp/yaml.h>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc {
namespace {

std::string at_line(const YAML::Node& node) { return "line " + std::to_string(node.Mark().line + 1); }

// YAML 1.2 core schema for plain scalars (https://yaml.org/spec/1.2.2/#1032-tag-resolution).
nlohmann::json plain_scalar(const std::string& text, const YAML::Node& node, const std::string& source) {
  static const std::regex null_re("~|null|Null|NULL|");
  static const std::regex true_re("true|True|TRUE"), false_re("false|False|FALSE");
  static const std::regex int_re("[-+]?[0-9]+"), hex_re("0x[0-9a-fA-F]+");
  static const std::regex float_re(R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
  static const std::regex special_re(R"([-+]?\.(inf|Inf|INF)|\.nan|\.NaN|\.NAN)");
  if (std::regex_match(text, null_re)) return nullptr;
  if (std::regex_match(text, true_re)) return true;
  if (std::regex_match(text, false_re)) return false;
  try {
    if (std::regex_match(text, int_re)) return std::stoll(text);
    if (std::regex_match(text, hex_re)) return std::stoll(text, nullptr, 16);
    if (std::regex_match(text, float_re)) return std::stod(text);
  } catch (const std::out_of_range&) {
    fail_input(source, at_line(node) + ": number \"" + text + "\" is out of range");
  }
  if (std::regex_match(text, special_re))
    fail_input(source, at_line(node) + ": \"" + text + "\" is not a finite number");
  return text;
}

nlohmann::json to_json(const YAML::Node& node, const std::string& source) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Scalar:
      // "!" marks a quoted (non-plain) scalar: always a string.
      return node.Tag() == "!" ? nlohmann::json(node.Scalar()) : plain_scalar(node.Scalar(), node, source);
    case YAML::NodeType::Sequence: {
      nlohmann::json list = nlohmann::json::array();
      for (const auto& item : node) list.push_back(to_json(item, source));
      return list;
    }
    case YAML::NodeType::Map: {
      nlohmann::json object = nlohmann::json::object();
      for (const auto& item : node) {
        if (!item.first.IsScalar()) fail_input(source, at_line(item.first) + ": mapping keys must be strings");
        const std::string key = item.first.Scalar();
        if (object.contains(key)) fail_input(source, at_line(item.first) + ": duplicate key \"" + key + "\"");
        object[key] = to_json(item.second, source);
      }
      return object;
    }
  }
  return nullptr;
}

}  // namespace

nlohmann::json parse_yaml(const std::string& text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    fail_input(source, "malformed YAML: line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  try {
    return to_json(root, source);
  } catch (const YAML::Exception& e) {
    fail_input(source, "malformed YAML: " + std::string(e.what()));
  }
}

nlohmann::json read_json_or_yaml(const std::filesystem::path& path) {
  const std::string text = read_file(path);
  const std::string extension = path.extension().string();
  if (extension == ".yaml" || extension == ".yml") return parse_yaml(text, path.string());
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail_input(path.string(), std::string("malformed JSON: ") + e.what());
  }
}

}  // namespace rc
