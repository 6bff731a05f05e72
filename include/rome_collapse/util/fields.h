#pragma once
// One field list per config struct drives parsing, unknown-field errors, defaults,
// documentation and the provenance block (gemma.cpp's visitor idea). A struct exposes
//   template <class V> void visit_fields(V&& visit) { visit("name", member, "help"); ... }
#include <cmath>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "rome_collapse/util/error.h"

namespace rc {

// The candidate closest to `name` by edit distance, or "" when none is close enough to be a
// plausible misspelling (at most 2 edits, or a third of the name's length when that is more).
std::string closest_name(const std::string& name, const std::vector<std::string>& candidates);

// "where: unknown field \"x\" (did you mean \"y\"?)" for one, "where: unknown fields: ..." for
// several, each with its suggestion; all of them in one message.
std::string unknown_fields_message(const std::string& where, const std::vector<std::string>& unknown,
                                   const std::vector<std::string>& known);

namespace detail {
template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

template <class T>
void read_scalar(const nlohmann::json& value, T& member, const std::string& where) {
  try {
    if constexpr (std::is_same_v<T, bool>) {
      if (!value.is_boolean()) throw InputError(where + ": expected true or false");
    } else if constexpr (std::is_integral_v<T>) {
      if (!value.is_number_integer()) throw InputError(where + ": expected an integer");
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!value.is_number()) throw InputError(where + ": expected a number");
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!value.is_string()) throw InputError(where + ": expected a string");
    }
    member = value.get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw InputError(where + ": " + e.what());
  }
  if constexpr (std::is_floating_point_v<T>) {
    if (!std::isfinite(static_cast<double>(member))) throw InputError(where + ": must be finite");
  }
}

template <class T>
void read_field(const nlohmann::json& value, T& member, const std::string& where) {
  if constexpr (is_optional<T>::value) {  // null: unset
    if (value.is_null()) {
      member.reset();
    } else {
      typename T::value_type inner{};
      read_field(value, inner, where);
      member = inner;
    }
  } else if constexpr (std::is_same_v<T, nlohmann::json>) {  // validated by the struct's owner
    member = value;
  } else {
    read_scalar(value, member, where);
  }
}

template <class T>
nlohmann::json to_json_value(const T& member) {
  if constexpr (is_optional<T>::value) {
    return member ? nlohmann::json(*member) : nlohmann::json(nullptr);
  } else {
    return nlohmann::json(member);
  }
}
}  // namespace detail

// The names of an object's fields, in declaration order.
template <class Object>
std::vector<std::string> field_names(const Object& object) {
  std::vector<std::string> names;
  const_cast<Object&>(object).visit_fields(
      [&](const char* name, auto& /*member*/, const char* /*help*/) { names.push_back(name); });
  return names;
}

// Reads the fields present in `json` into `object`. Keys that are not fields (and not in
// `also_known`, keys the caller handles itself) are reported together in one InputError, each
// with the closest field name. `where` prefixes messages ("demo.json: hparams").
template <class Object>
void read_fields(Object& object, const nlohmann::json& json, const std::string& where,
                 const std::vector<std::string>& also_known = {}) {
  if (!json.is_object()) throw InputError(where + ": expected a JSON object");
  std::vector<std::string> known = field_names(object);
  known.insert(known.end(), also_known.begin(), also_known.end());
  const std::set<std::string> known_set(known.begin(), known.end());
  std::vector<std::string> unknown;
  for (const auto& item : json.items())
    if (!known_set.count(item.key())) unknown.push_back(item.key());
  if (!unknown.empty()) throw InputError(unknown_fields_message(where, unknown, known));
  object.visit_fields([&](const char* name, auto& member, const char* /*help*/) {
    if (json.contains(name)) detail::read_field(json[name], member, where + "." + name);
  });
}

template <class Object>
nlohmann::json fields_to_json(const Object& object) {
  nlohmann::json out = nlohmann::json::object();
  const_cast<Object&>(object).visit_fields(
      [&](const char* name, auto& member, const char* /*help*/) { out[name] = detail::to_json_value(member); });
  return out;
}

// "| name | default | help |" rows for the README.
template <class Object>
std::vector<std::string> describe_fields(const Object& defaults) {
  std::vector<std::string> rows;
  const_cast<Object&>(defaults).visit_fields([&](const char* name, auto& member, const char* help) {
    rows.push_back(std::string("| `") + name + "` | `" + detail::to_json_value(member).dump() + "` | " + help + " |");
  });
  return rows;
}

// "  name (default: value)\n      help" lines for --help.
template <class Object>
std::string help_fields(const Object& defaults, const std::string& indent = "  ") {
  std::string text;
  const_cast<Object&>(defaults).visit_fields([&](const char* name, auto& member, const char* help) {
    const nlohmann::json value = detail::to_json_value(member);
    const bool empty = value.is_null() || (value.is_string() && value.get<std::string>().empty());
    text += indent + name + (empty ? std::string() : " (default " + value.dump() + ")") + ": " + help + "\n";
  });
  return text;
}

}  // namespace rc
