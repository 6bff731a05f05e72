#include "rome_collapse/util/run_guard.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {
namespace fs = std::filesystem;

// ---- RunLock ---------------------------------------------------------------------------------

namespace {

std::string own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()), line;
  for (char c : raw) line += c == '\0' ? ' ' : c;
  while (!line.empty() && line.back() == ' ') line.pop_back();
  return excerpt(line, 300);
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

// "pid 123 (started ..., command ...)": the holder as its lock file describes it.
std::string describe_holder(int fd) {
  char buffer[1024];
  const ssize_t n = ::pread(fd, buffer, sizeof buffer - 1, 0);
  std::string text = n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "";
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text.empty() ? "a process that has not yet written its name" : excerpt(text, 400);
}

int pid_in(const std::string& holder) {
  if (holder.rfind("pid ", 0) != 0) return 0;
  try {
    return std::stoi(holder.substr(4));
  } catch (const std::exception&) {
    return 0;
  }
}

bool same_file(int fd, const fs::path& path) {
  struct stat open_file {}, named {};
  return ::fstat(fd, &open_file) == 0 && ::stat(path.c_str(), &named) == 0 && open_file.st_dev == named.st_dev &&
         open_file.st_ino == named.st_ino;
}

}  // namespace

RunLock::RunLock(const fs::path& lock_file, const std::string& what) : path_(lock_file) {
  // The holder removes the file when done: a lock taken on a file unlinked meanwhile guards
  // nothing, so retry until the locked file is the one the name points to.
  std::error_code ec;
  if (path_.has_parent_path()) fs::create_directories(path_.parent_path(), ec);
  if (ec) fail_input(path_.parent_path().string(), "cannot create the directory: " + ec.message());
  for (int attempt = 0; attempt < 100; ++attempt) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail_input(path_.string(), std::string("cannot create the lock file of the ") + what + ": " + std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int saved = errno;
      const std::string holder = describe_holder(fd_);
      ::close(fd_);
      fd_ = -1;
      if (saved == EWOULDBLOCK)
        fail_input(path_.string(), "the " + what + " is in use by another run: " + holder +
                                       "; wait for it to finish or write elsewhere");
      fail_input(path_.string(), std::string("cannot lock: ") + std::strerror(saved));
    }
    if (!same_file(fd_, path_)) {
      ::close(fd_);
      fd_ = -1;
      continue;
    }
    const std::string previous = describe_holder(fd_);
    const int previous_pid = pid_in(previous);
    if (previous_pid > 0 && previous_pid != ::getpid())
      std::cerr << "note: taking over the lock of the " << what << " from pid " << previous_pid
                << ", which is no longer running (" << path_.string() << ")\n";
    const std::string me = "pid " + std::to_string(::getpid()) + " (started " + utc_now() + ", command: " +
                           own_command_line() + ")\n";
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
      const int saved = errno;
      ::unlink(path_.c_str());
      ::close(fd_);
      fd_ = -1;
      fail_input(path_.string(), std::string("cannot write the lock file: ") + std::strerror(saved));
    }
    return;
  }
  fail_input(path_.string(), "cannot lock: the lock file keeps being replaced");
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // while still holding it: nobody can lock the old file and believe it current
  ::close(fd_);
}

// ---- fingerprints ------------------------------------------------------------------------------

namespace {

// Files of a model or tokenizer directory that the loaders read.
bool is_model_or_tokenizer_file(const std::string& name) {
  static const std::set<std::string> exact = {"config.json",      "model.safetensors.index.json", "vocab.json",
                                              "merges.txt",       "tokenizer.json",               "tokenizer.model",
                                              "tokenizer_config.json", "special_tokens_map.json",  "tokenizer.bin"};
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return exact.count(name) || ends_with(".safetensors") || ends_with(".model") ||
         (name.rfind("tok", 0) == 0 && ends_with(".bin"));
}

std::vector<fs::path> files_of(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    std::vector<fs::path> files = {path};
    // A .safetensors file is read with the config.json beside it.
    if (path.extension() == ".safetensors" && fs::exists(path.parent_path() / "config.json", ec))
      files.push_back(path.parent_path() / "config.json");
    return files;
  }
  std::vector<fs::path> files;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec))
    if (it->is_regular_file(ec) && is_model_or_tokenizer_file(it->path().filename().string())) files.push_back(it->path());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

nlohmann::json input_fingerprint(const std::vector<RunInput>& inputs) {
  nlohmann::json fingerprint = nlohmann::json::object();
  std::map<std::string, std::string> hashed;  // absolute file -> sha256, each file read once
  for (const RunInput& input : inputs) {
    if (input.path.empty() || input.path.string().rfind("builtin:", 0) == 0) continue;
    nlohmann::json& files = fingerprint[input.role];
    files = nlohmann::json::object();
    for (const fs::path& file : files_of(input.path)) {
      std::error_code ec;
      const fs::path absolute = fs::weakly_canonical(file, ec);
      const std::string key = ec ? file.string() : absolute.string();
      auto found = hashed.find(key);
      if (found == hashed.end()) found = hashed.emplace(key, sha256_file(file)).first;
      files[key] = found->second;
    }
  }
  return fingerprint;
}

std::vector<std::string> fingerprint_differences(const nlohmann::json& recorded, const nlohmann::json& current) {
  std::vector<std::string> out;
  std::function<void(const nlohmann::json&, const nlohmann::json&, const std::string&)> compare =
      [&](const nlohmann::json& before, const nlohmann::json& now, const std::string& where) {
        if (before == now) return;
        if (!before.is_object() || !now.is_object()) {
          const bool hashes = before.is_string() && now.is_string() && before.get_ref<const std::string&>().size() == 64 &&
                              now.get_ref<const std::string&>().size() == 64;
          out.push_back(where + (hashes ? ": content changed"
                                        : ": was " + json_excerpt(before) + ", now " + json_excerpt(now)));
          return;
        }
        const std::string prefix = where.empty() ? "" : where + ": ";
        for (const auto& item : now.items()) {
          if (!before.contains(item.key()))
            out.push_back(prefix + excerpt(item.key(), 200) + ": not in the recorded run");
          else
            compare(before[item.key()], item.value(), prefix + excerpt(item.key(), 200));
        }
        for (const auto& item : before.items())
          if (!now.contains(item.key())) out.push_back(prefix + excerpt(item.key(), 200) + ": no longer given");
      };
  compare(recorded, current, "");
  return out;
}

// ---- signals -----------------------------------------------------------------------------------

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void request_stop(int signal) {
  if (g_stop_signal != 0) {  // a second signal: stop now, without finishing the record
    std::signal(signal, SIG_DFL);
    std::raise(signal);
    return;
  }
  g_stop_signal = signal;
}

}  // namespace

StopSignalScope::StopSignalScope() {
  g_stop_signal = 0;
  struct sigaction action {};
  action.sa_handler = request_stop;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, &previous_int_);
  sigaction(SIGTERM, &action, &previous_term_);
}

StopSignalScope::~StopSignalScope() {
  sigaction(SIGINT, &previous_int_, nullptr);
  sigaction(SIGTERM, &previous_term_, nullptr);
}

int StopSignalScope::received() { return g_stop_signal; }

const char* StopSignalScope::name(int signal) {
  return signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "a signal";
}

// ---- resumable runs ----------------------------------------------------------------------------

ResumableRun::ResumableRun(const fs::path& lock_file, const std::string& what, const fs::path& temporaries_dir)
    : lock_(lock_file, what) {
  remove_stale_temporaries(temporaries_dir);
}

void ResumableRun::watch_signals() {
  if (!signals_) signals_.emplace();
}

bool ResumableRun::stop_requested(int64_t done, int64_t limit) const {
  return signal() != 0 || (limit > 0 && done >= limit);
}

int ResumableRun::signal() const { return signals_ ? StopSignalScope::received() : 0; }

std::string ResumableRun::stop_cause(const std::string& limit_name) const {
  return signal() != 0 ? StopSignalScope::name(signal()) : limit_name;
}

int ResumableRun::stop_exit_code(int limit_exit) const { return signal() != 0 ? 128 + signal() : limit_exit; }

}  // namespace rc
