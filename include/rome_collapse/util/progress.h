#pragma once
// Progress with an ETA on stderr for the long commands (check, keys, perplexity, stats, batch).
// On a terminal: one line rewritten in place, at most twice a second, from the first second on.
// Otherwise (a log file, a CI job): a plain line every `interval_s` seconds (default 5), so runs
// shorter than that print nothing, and a closing line for runs that printed any. The clock is
// injectable so that tests never depend on timing.
#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>

namespace rc {

// "42s", "3m05s", "1h02m"; "?" for a negative or non-finite duration.
std::string short_duration(double seconds);

class ProgressReporter {
 public:
  using Seconds = std::function<double()>;  // a monotonic clock in seconds
  // `label` starts every line ("check"), `unit` names what is counted ("prompts").
  ProgressReporter(std::string label, int64_t total, std::string unit);
  ProgressReporter(std::string label, int64_t total, std::string unit, std::ostream& out, bool terminal,
                   Seconds clock, double interval_s = 5.0);
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;
  ~ProgressReporter();

  // A resumed run: work already done before this run, left out of the rate and the ETA.
  void start_at(int64_t done);
  void set_total(int64_t total);
  // Prints when a line is due. `detail` is appended (e.g. "1200 tokens/s").
  void update(int64_t done, const std::string& detail = "");
  void advance(int64_t more, const std::string& detail = "") { update(done_ + more, detail); }
  // Ends the terminal line, or prints the closing line if any line was printed.
  void finish(const std::string& detail = "");
  double elapsed() const;
  int64_t total() const { return total_; }

  // The line for `done` after `elapsed` seconds (what update prints).
  std::string line(int64_t done, double elapsed, const std::string& detail) const;

 private:
  std::string label_, unit_;
  int64_t total_, start_done_ = 0, done_ = 0;
  std::ostream& out_;
  bool terminal_;
  Seconds clock_;
  double interval_s_, started_, last_print_;
  bool printed_ = false, line_open_ = false, finished_ = false;
};

}  // namespace rc
