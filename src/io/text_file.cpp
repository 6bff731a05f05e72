#include "rome_collapse/io/text_file.h"

#include <sstream>

#include <nlohmann/json.hpp>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {
namespace {

std::string text_of(const nlohmann::json& record, const std::string& where) {
  if (record.is_string()) return record.get<std::string>();
  if (record.is_object()) {
    for (const char* key : {"Text", "text"})
      if (record.contains(key) && record[key].is_string()) return record[key].get<std::string>();
  }
  throw InputError(where + ": record has no string field \"Text\" or \"text\"");
}

}  // namespace

std::vector<std::string> read_texts(const std::filesystem::path& path) {
  const std::string contents = read_file(path);
  const size_t first = contents.find_first_not_of(" \t\r\n");
  std::vector<std::string> texts;
  if (first == std::string::npos) fail_input(path.string(), "no texts in file");
  if (contents[first] == '[') {
    const nlohmann::json list = parse_json(contents, path.string(), "malformed JSON");
    for (size_t i = 0; i < list.size(); ++i)
      texts.push_back(text_of(list[i], path.string() + ": record " + std::to_string(i)));
  } else if (contents[first] == '{') {
    std::istringstream lines(contents);
    std::string line;
    for (size_t number = 1; std::getline(lines, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = path.string() + ": line " + std::to_string(number);
      const nlohmann::json record = parse_json(line, where, "malformed JSON");
      texts.push_back(text_of(record, where));
    }
  } else {
    std::istringstream lines(contents);
    std::string line;
    while (std::getline(lines, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos) texts.push_back(line);
    }
  }
  if (texts.empty()) fail_input(path.string(), "no texts in file");
  return texts;
}

}  // namespace rc
