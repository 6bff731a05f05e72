#include "rome_collapse/experiment/journal.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <unistd.h>
#include <vector>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"
#include "rome_collapse/util/run_guard.h"

namespace rc {
namespace fs = std::filesystem;
using json = nlohmann::json;

ResultsAppender::ResultsAppender(const fs::path& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_input(path.string(), std::string("cannot open for appending: ") + std::strerror(errno));
}

ResultsAppender::~ResultsAppender() {
  if (fd_ >= 0) ::close(fd_);
}

void ResultsAppender::append(const json& line) {
  const std::string text = json_text(line, -1) + "\n";
  size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd_, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_input(path_.string(), std::string("write failed: ") + std::strerror(errno));
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd_) != 0) fail_input(path_.string(), std::string("fsync failed: ") + std::strerror(errno));
}

std::string pair_key(int64_t position, const std::string& method) { return std::to_string(position) + "/" + method; }

std::map<std::string, json> finished_pairs(const ResultsFile& existing, const std::map<int64_t, int64_t>& case_at_position,
                                           const fs::path& results_path) {
  std::map<std::string, json> done;
  for (size_t i = 0; i < existing.lines.size(); ++i) {
    const json& line = existing.lines[i];
    const std::string where = results_path.string() + ": line " + std::to_string(i + 1);
    int64_t position = 0, case_id = 0;
    std::string method;
    try {
      position = line.at("position").get<int64_t>();
      case_id = line.at("case_id").get<int64_t>();
      method = line.at("method").get<std::string>();
    } catch (const json::exception&) {
      throw InputError(where + ": expected integer \"position\" and \"case_id\" and a string \"method\"");
    }
    const auto selected = case_at_position.find(position);
    if (selected == case_at_position.end() || selected->second != case_id)
      throw InputError(where + ": the line for case " + std::to_string(case_id) + " at position " +
                       std::to_string(position) + " does not belong to this run's selection");
    if (!done.emplace(pair_key(position, method), line).second)
      throw InputError(where + ": case " + std::to_string(case_id) + " (" + excerpt(method) +
                       ") appears twice (two runs wrote into this directory at once?); remove the repeated lines "
                       "or start again in a new --out directory");
  }
  return done;
}

void check_same_inputs(const json& previous, const json& inputs, const fs::path& run_path) {
  if (!previous.contains("inputs")) {
    std::cerr << "batch: note: " << run_path.string() << " records no input fingerprint (an older run); "
              << "only its config is checked\n";
    return;
  }
  const std::vector<std::string> differences = fingerprint_differences(previous["inputs"], inputs);
  if (differences.empty()) return;
  std::string list;
  for (const std::string& line : differences) list += "\n  " + line;
  fail_input(run_path.string(), "the inputs changed since this run started, resuming would mix old and new results:" +
                                    list + "\nrestore them, or use a new --out directory");
}

json read_run_json(const fs::path& path) { return parse_json(read_file(path), path.string(), "malformed JSON"); }

}  // namespace rc
