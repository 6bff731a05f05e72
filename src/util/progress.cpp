#include "rome_collapse/util/progress.h"

#include <cmath>
#include <cstdio>
#include <iostream>
#include <unistd.h>

namespace rc {
namespace {

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

std::string short_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  char text[32];
  const long s = static_cast<long>(seconds + 0.5);
  if (s >= 3600)
    std::snprintf(text, sizeof text, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60)
    std::snprintf(text, sizeof text, "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(text, sizeof text, "%lds", s);
  return text;
}

ProgressReporter::ProgressReporter(std::string label, int64_t total, std::string unit)
    : ProgressReporter(std::move(label), total, std::move(unit), std::cerr, ::isatty(STDERR_FILENO) == 1,
                       steady_seconds) {}

ProgressReporter::ProgressReporter(std::string label, int64_t total, std::string unit, std::ostream& out,
                                   bool terminal, Seconds clock, double interval_s)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      out_(out),
      terminal_(terminal),
      clock_(std::move(clock)),
      interval_s_(interval_s) {
  started_ = last_print_ = clock_();
}

ProgressReporter::~ProgressReporter() {
  if (line_open_) out_ << "\n" << std::flush;
}

void ProgressReporter::start_at(int64_t done) { start_done_ = done_ = done; }

void ProgressReporter::set_total(int64_t total) { total_ = total; }

double ProgressReporter::elapsed() const { return clock_() - started_; }

std::string ProgressReporter::line(int64_t done, double elapsed, const std::string& detail) const {
  const int64_t this_run = done - start_done_;
  const double eta = this_run > 0 ? elapsed / double(this_run) * double(total_ - done) : -1;
  char text[256];
  std::snprintf(text, sizeof text, "%s: %lld/%lld %s (%.1f%%), elapsed %s, ETA %s", label_.c_str(),
                static_cast<long long>(done), static_cast<long long>(total_), unit_.c_str(),
                total_ > 0 ? 100.0 * double(done) / double(total_) : 100.0, short_duration(elapsed).c_str(),
                short_duration(eta).c_str());
  return detail.empty() ? std::string(text) : std::string(text) + ", " + detail;
}

void ProgressReporter::update(int64_t done, const std::string& detail) {
  done_ = done;
  const double now = clock_();
  // A terminal shows the line from the first second on; a log gets one every interval.
  const double wait = terminal_ ? (printed_ ? 0.5 : 1.0) : interval_s_;
  if (now - last_print_ < wait) return;
  last_print_ = now;
  const std::string text = line(done, now - started_, detail);
  if (terminal_)
    out_ << "\r" << text << "\033[K" << std::flush;
  else
    out_ << text << "\n" << std::flush;
  printed_ = true;
  line_open_ = terminal_;
}

void ProgressReporter::finish(const std::string& detail) {
  if (finished_) return;
  finished_ = true;
  if (!printed_) return;  // a short run stays quiet
  const std::string text = line(done_, elapsed(), detail);
  if (terminal_)
    out_ << "\r" << text << "\033[K\n" << std::flush;
  else
    out_ << text << "\n" << std::flush;
  line_open_ = false;
}

}  // namespace rc
