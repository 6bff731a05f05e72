#include "rome_collapse/util/json.h"

#include <stdexcept>
#include <unordered_set>
#include <vector>

#include "rome_collapse/util/error.h"

namespace rc {
namespace {

// Thrown from the parser callback (which nlohmann lets through) and turned into an InputError.
struct JsonShapeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Checks depth and duplicate keys as the parser goes, before a deep value exists anywhere.
class ShapeCheck {
 public:
  bool operator()(int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    switch (event) {
      case Event::object_start:
      case Event::array_start:
        if (depth >= kMaxJsonDepth)
          throw JsonShapeError("nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
        if (event == Event::object_start) keys_.emplace_back();
        break;
      case Event::object_end:
        keys_.pop_back();
        break;
      case Event::key:
        // A key event comes only while the innermost open container is an object.
        if (!keys_.back().insert(parsed.get_ref<const std::string&>()).second)
          throw JsonShapeError("duplicate key \"" + excerpt(parsed.get_ref<const std::string&>()) +
                               "\" in one object (which one counts would be a guess)");
        break;
      default:
        break;
    }
    return true;
  }

 private:
  std::vector<std::unordered_set<std::string>> keys_;  // keys seen, one set per open object
};

}  // namespace

nlohmann::json parse_json(std::string_view text, const std::string& where, const std::string& label) {
  ShapeCheck check;
  try {
    return nlohmann::json::parse(text.begin(), text.end(), std::ref(check));
  } catch (const JsonShapeError& e) {
    throw InputError(where + ": " + label + ": " + e.what());
  } catch (const nlohmann::json::exception& e) {
    // nlohmann quotes the last token read, which may be a megabyte-long string.
    throw InputError(where + ": " + label + ": " + excerpt(e.what(), 240));
  }
}

std::string json_excerpt(const nlohmann::json& value, size_t max_bytes) {
  return excerpt(value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), max_bytes);
}

}  // namespace rc
