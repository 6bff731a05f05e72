// The layer rule of the README's code map, as a test: scripts/check-layers.sh passes on this
// tree, and fails, naming the file, the line and both layers, on a tree where a lower layer
// includes a higher one (so a check that always passed would be caught here).
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

ScriptRun check_layers(const fs::path& root) {
  const std::string command = "bash '" + std::string(ROME_SOURCE_DIR) + "/scripts/check-layers.sh' '" +
                              root.string() + "' 2>&1";
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
