#include "support/test_support.h"

#include "rome_collapse/util/error.h"

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

namespace rc::test {

std::string cli_binary();

std::filesystem::path shared_dir() {
  const char* env = std::getenv("ROME_SHARED");
  std::filesystem::path dir = env ? env : ROME_SHARED_DIR;
  if (!std::filesystem::is_directory(dir / "reference")) return {};
  return dir;
}

std::filesystem::path shared_path(const std::string& relative) { return shared_dir() / relative; }

std::string test_device() {
  const char* env = std::getenv("ROME_TEST_DEVICE");
  return env && *env ? env : "cpu";
}

std::filesystem::path scratch_dir(const std::string& name) {
  auto dir = std::filesystem::path(ROME_BINARY_DIR) / "test-scratch" / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

CommandResult run_cli(const std::string& args) {
  const std::string binary = cli_binary();
  static int counter = 0;
  auto dir = std::filesystem::path(ROME_BINARY_DIR) / "test-scratch" / "cli-output";
  std::filesystem::create_directories(dir);
  std::string stem = (dir / (std::to_string(::getpid()) + "-" + std::to_string(counter++))).string();
  std::string command = binary + " " + args + " >" + stem + ".out 2>" + stem + ".err </dev/null";
  int status = std::system(command.c_str());
  CommandResult result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  auto slurp = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  result.out = slurp(stem + ".out");
  result.err = slurp(stem + ".err");
  return result;
}

std::string cli_binary() {
  const char* env = std::getenv("ROME_CLI");
  return env ? env : (std::string(ROME_BINARY_DIR) + "/rome-collapse");
}

int spawn_cli(const std::vector<std::string>& args, const std::filesystem::path& err) {
  const std::string binary = cli_binary();
  const pid_t pid = ::fork();
  if (pid == 0) {
    // A child that cannot redirect must not run the CLI into the test's own output.
    if (!std::freopen("/dev/null", "w", stdout) || !std::freopen(err.c_str(), "w", stderr)) ::_exit(127);
    std::vector<char*> argv{const_cast<char*>(binary.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    std::_Exit(127);
  }
  return pid;
}

std::string read_if_exists(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void expect_input_error(const std::function<void()>& action, const std::vector<std::string>& needles) {
  try {
    action();
    ADD_FAILURE() << "expected InputError, nothing was thrown";
  } catch (const InputError& e) {
    for (const auto& needle : needles)
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "message \"" << e.what() << "\" does not contain \"" << needle << "\"";
  }
}

}  // namespace rc::test
