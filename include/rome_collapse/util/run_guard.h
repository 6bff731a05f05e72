#pragma once
// What keeps a resumable run (`batch` into a directory, `stats` into a file) from mixing: one
// process at a time (RunLock), the same inputs as the run it resumes (input_fingerprint), and a
// clean stop on SIGINT/SIGTERM (StopSignalScope); ResumableRun puts them together for both.
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace rc {

// An exclusive flock(2) on `lock_file`, held until destruction (the file is then removed). The
// kernel drops the lock when its holder dies, even of SIGKILL, so a lock left by a dead process is
// taken over (with a note on stderr); one held by a live process is an InputError naming it (pid,
// start time, command line).
class RunLock {
 public:
  // `what` names the locked thing in messages ("batch directory out/").
  RunLock(const std::filesystem::path& lock_file, const std::string& what);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

// One input of a run: a role ("model", "dataset", ...) and a file or model/tokenizer directory.
struct RunInput {
  std::string role;
  std::filesystem::path path;
};

// {role: {file: sha256 of its content}}; for a directory, the model and tokenizer files in it
// (config.json, *.safetensors, the index, vocab.json, merges.txt, tokenizer.json, *.model, tok*.bin).
// Empty paths and builtin: models are skipped. Files are hashed once however often they appear.
nlohmann::json input_fingerprint(const std::vector<RunInput>& inputs);

// What differs between a recorded fingerprint and the current one, one line per difference
// ("dataset: d.json: content changed"); empty when they agree. Works for any JSON object: nested
// objects are compared key by key, other values as a whole.
std::vector<std::string> fingerprint_differences(const nlohmann::json& recorded, const nlohmann::json& current);

// While alive, SIGINT and SIGTERM only set a flag that the run checks between records; a second
// signal ends the process at once (default action). The previous handlers come back afterwards.
class StopSignalScope {
 public:
  StopSignalScope();
  ~StopSignalScope();
  StopSignalScope(const StopSignalScope&) = delete;
  StopSignalScope& operator=(const StopSignalScope&) = delete;

  // The signal received (SIGINT, SIGTERM) or 0.
  static int received();
  static const char* name(int signal);  // "SIGINT", "SIGTERM"

 private:
  struct sigaction previous_int_ {}, previous_term_ {};
};

// One resumable run, the same for `batch` and `stats`: its output locked (RunLock), the
// temporaries a killed run left removed, and, once watch_signals() is called, SIGINT/SIGTERM
// turned into a stop request that the run checks between units of work (a record, a batch of
// texts). A stopped run is resumed by running the same command again.
class ResumableRun {
 public:
  // `what` names the output in messages ("batch directory out/"); `temporaries_dir` is where the
  // output's temporary files live.
  ResumableRun(const std::filesystem::path& lock_file, const std::string& what,
               const std::filesystem::path& temporaries_dir);

  // From here until destruction a signal is a stop request (a second one ends the process).
  void watch_signals();
  // Whether to stop after the unit just done: a signal came, or `done` reached `limit` (limit > 0).
  bool stop_requested(int64_t done, int64_t limit) const;
  // The signal received while watching, or 0.
  int signal() const;
  // "SIGINT" / "SIGTERM" after a signal, else `limit_name` (the flag that set the limit).
  std::string stop_cause(const std::string& limit_name) const;
  // The exit status of a stopped run: 128 + the signal, or `limit_exit` when the limit stopped it.
  int stop_exit_code(int limit_exit) const;

 private:
  RunLock lock_;
  std::optional<StopSignalScope> signals_;
};

}  // namespace rc
