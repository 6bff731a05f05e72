#pragma once
// A batch run's journal: DIR/results.jsonl, appended one complete, fsync'ed line per edit so that
// a killed run loses at most the line being written; the (position, method) pairs it already
// holds; and DIR/run.json, whose recorded inputs a resume must find unchanged.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "rome_collapse/experiment/tables.h"

namespace rc {

// results.jsonl opened for appending; InputError naming the file when it cannot be opened or written.
class ResultsAppender {
 public:
  explicit ResultsAppender(const std::filesystem::path& path);
  ~ResultsAppender();
  ResultsAppender(const ResultsAppender&) = delete;
  ResultsAppender& operator=(const ResultsAppender&) = delete;

  // One line of compact JSON, written whole and synced to disk before returning.
  void append(const nlohmann::json& line);

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

// "position/method": the key of one edit of a run.
std::string pair_key(int64_t position, const std::string& method);

// The pairs results.jsonl already holds, by pair_key; `case_at_position` is the run's selection
// (dataset position -> case id). A line of another selection, a pair written twice or a line
// without its keys is an InputError, never silently counted.
std::map<std::string, nlohmann::json> finished_pairs(const ResultsFile& existing,
                                                     const std::map<int64_t, int64_t>& case_at_position,
                                                     const std::filesystem::path& results_path);

// A resume must see the files the run started with (run.json's "inputs" against `inputs`); a
// run.json from before fingerprints is let through with a note (only its config hash can be compared).
void check_same_inputs(const nlohmann::json& previous, const nlohmann::json& inputs,
                       const std::filesystem::path& run_path);

// run.json, parsed; InputError naming the file when malformed.
nlohmann::json read_run_json(const std::filesystem::path& path);

}  // namespace rc
