// The layout rules of the README's code map, as tests: scripts/check-layers.sh passes on this
// tree, and fails, naming the file, the line and both layers, on a tree where a lower layer
// includes a higher one; scripts/function-lengths.py passes on src/ and fails on a function over
// 80 lines that has no "long-function:" comment (so a check that always passed is caught here).
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "support/test_support.h"

namespace fs = std::filesystem;

namespace {

struct ScriptRun {
  int exit_code = -1;
  std::string output;
};

ScriptRun run_script(const std::string& command);

ScriptRun check_layers(const fs::path& root) {
  return run_script("bash '" + std::string(ROME_SOURCE_DIR) + "/scripts/check-layers.sh' '" + root.string() + "' 2>&1");
}

ScriptRun function_lengths(const fs::path& root) {
  return run_script("python3 '" + std::string(ROME_SOURCE_DIR) + "/scripts/function-lengths.py' '" + root.string() +
                    "' 2>&1");
}

ScriptRun run_script(const std::string& command) {
  ScriptRun run;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return run;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) run.output.append(buffer, n);
  const int status = ::pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

void put(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

}  // namespace

TEST(Layers, ThisTreeIncludesOnlyDownwards) {
  const ScriptRun run = check_layers(ROME_SOURCE_DIR);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("every include goes down"), std::string::npos) << run.output;
}

TEST(Layers, AnUpwardIncludeIsRefusedNamingFileLineAndLayers) {
  const fs::path root = rc::test::scratch_dir("layers-upward");
  put(root / "include/rome_collapse/util/files.h", "#pragma once\n");
  put(root / "src/rome/edit.cpp", "#include \"rome_collapse/util/files.h\"\n");
  put(root / "src/io/npz.cpp", "// a reader\n#include \"rome_collapse/util/files.h\"\n#include \"rome_collapse/rome/covariance.h\"\n");
  const ScriptRun run = check_layers(root);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_NE(run.output.find("src/io/npz.cpp:3: layer 'io' includes rome_collapse/rome/ from the higher layer 'rome'"),
            std::string::npos)
      << run.output;
  EXPECT_EQ(run.output.find("edit.cpp"), std::string::npos) << run.output;  // rome may use util
}

TEST(Layers, AFolderThatIsNoLayerIsRefused) {
  const fs::path root = rc::test::scratch_dir("layers-unknown");
  put(root / "src/misc/helpers.cpp", "int x;\n");
  put(root / "src/util/files.cpp", "#include \"rome_collapse/misc/helpers.h\"\n");
  const ScriptRun run = check_layers(root);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_NE(run.output.find("src/misc/helpers.cpp: folder 'misc' is not a layer"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("src/util/files.cpp:1: includes rome_collapse/misc/, which is not a layer"),
            std::string::npos)
      << run.output;
}

std::string function_of(int body_lines) {
  std::string text = "int f(int x) {\n";
  for (int i = 0; i < body_lines; ++i) text += "  x += 1;  // a } in a comment is not a brace\n";
  return text + "  return x;\n}\n";
}

TEST(FunctionLengths, NoFunctionInSrcIsOver80Lines) {
  const ScriptRun run = function_lengths(fs::path(ROME_SOURCE_DIR) / "src");
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("none over 80 lines"), std::string::npos) << run.output;
}

TEST(FunctionLengths, ALongFunctionIsNamedUnlessACommentSaysWhy) {
  const fs::path root = rc::test::scratch_dir("function-lengths");
  put(root / "short.cpp", function_of(70));
  put(root / "long.cpp", "// a file\n" + function_of(85));
  put(root / "explained.cpp", "// long-function: one table, clearer in one piece\n" + function_of(85));
  const ScriptRun run = function_lengths(root);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_NE(run.output.find("long.cpp:2 f"), std::string::npos) << run.output;
  EXPECT_EQ(run.output.find("short.cpp"), std::string::npos) << run.output;
  EXPECT_EQ(run.output.find("explained.cpp"), std::string::npos) << run.output;
}
