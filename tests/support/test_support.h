#pragma once
// Shared helpers for the test suite: where ../shared is, skipping when it is absent,
// running the CLI and comparing tensors with a printed max difference.
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace rc::test {

// ../shared (or $ROME_SHARED); empty path when it does not exist.
std::filesystem::path shared_dir();
// shared_dir()/relative; the caller must have checked shared_dir() is non-empty.
std::filesystem::path shared_path(const std::string& relative);
// A fresh empty directory under the build tree, removed by nobody (inspectable after a failure).
std::filesystem::path scratch_dir(const std::string& name);

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs the built rome-collapse binary with `args` (a shell-quoted string).
CommandResult run_cli(const std::string& args);

// Starts the CLI without waiting (to signal it); stdout to /dev/null, stderr to `err`.
int spawn_cli(const std::vector<std::string>& args, const std::filesystem::path& err);

// The file's bytes, or "" when it does not exist (yet): for polling files a running CLI writes.
std::string read_if_exists(const std::filesystem::path& path);

// Where the golden-value tests run the model: "cpu", or $ROME_TEST_DEVICE ("cuda" on a GPU
// machine, scripts/gpu-check.sh), so that the same tolerances are checked on both.
std::string test_device();

// Expects `action` to throw rc::InputError whose message contains every one of `needles`.
void expect_input_error(const std::function<void()>& action, const std::vector<std::string>& needles);

}  // namespace rc::test

// Skips the current test with a clear message when ../shared is not there.
#define ROME_REQUIRE_SHARED()                                                              \
  do {                                                                                     \
    if (::rc::test::shared_dir().empty())                                                  \
      GTEST_SKIP() << "../shared is absent (set ROME_SHARED to its path to run this test)"; \
  } while (0)
