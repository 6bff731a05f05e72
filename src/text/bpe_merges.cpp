#include "bpe_merges.h"

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc::bpe {

std::vector<MergeLine> read_merges_txt(const std::filesystem::path& merges_txt) {
  const std::string text = read_file(merges_txt);
  std::vector<MergeLine> merges;
  size_t line_start = 0;
  for (size_t line_number = 1; line_start < text.size(); ++line_number) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string::npos) line_end = text.size();
    std::string line = text.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_number == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 >= line.size() || line.find(' ', space + 1) != std::string::npos)
      fail_input(merges_txt.string(), "line " + std::to_string(line_number) +
                                          ": expected two symbols separated by one space, got '" + line + "'");
    merges.push_back({line_number, line.substr(0, space), line.substr(space + 1)});
  }
  return merges;
}

}  // namespace rc::bpe
