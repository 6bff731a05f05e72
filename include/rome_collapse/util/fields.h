#pragma once
// One field list per config struct drives parsing, unknown-field errors, defaults,
// documentation and the provenance block (gemma.cpp's visitor idea). A struct exposes
//   template <class V> void visit_fields(V&& visit) { visit("name", member, "help"); ... }
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "rome_collapse/util/error.h"

namespace rc {

namespace detail {
template <class T>
void read_field(const nlohmann::json& value, T& member, const std::string& where) {
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
}  // namespace detail

// Reads the fields present in `json` into `object`; a key that is not a field is an error
// naming it. `where` prefixes messages ("demo.json: hparams").
template <class Object>
void read_fields(Object& object, const nlohmann::json& json, const std::string& where) {
  if (!json.is_object()) throw InputError(where + ": expected a JSON object");
  std::set<std::string> known;
  object.visit_fields([&](const char* name, auto& member, const char* /*help*/) {
    known.insert(name);
    if (json.contains(name)) detail::read_field(json[name], member, where + "." + name);
  });
  for (const auto& item : json.items())
    if (!known.count(item.key())) throw InputError(where + ": unknown field \"" + excerpt(item.key()) + "\"");
}

template <class Object>
nlohmann::json fields_to_json(const Object& object) {
  nlohmann::json out = nlohmann::json::object();
  const_cast<Object&>(object).visit_fields(
      [&](const char* name, auto& member, const char* /*help*/) { out[name] = member; });
  return out;
}

// "| name | default | help |" rows for the README.
template <class Object>
std::vector<std::string> describe_fields(const Object& defaults) {
  std::vector<std::string> rows;
  const_cast<Object&>(defaults).visit_fields([&](const char* name, auto& member, const char* help) {
    rows.push_back(std::string("| `") + name + "` | `" + nlohmann::json(member).dump() + "` | " + help + " |");
  });
  return rows;
}

}  // namespace rc
