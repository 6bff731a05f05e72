// scripts/figures.py on JSON made by check, keys and edit: the three figures come out as
// non-empty PNG and PDF files. Skips when python3 or matplotlib is missing.
#include <cstdlib>
#include <fstream>
#include <sys/wait.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/golden.h"
#include "support/test_support.h"

namespace rc {
namespace {

using test::run_cli;
using test::scratch_dir;

// Debian's python3 (with python3-matplotlib) first, then whatever python3 is on PATH.
std::string python_with_matplotlib() {
  for (const char* python : {"/usr/bin/python3", "python3"}) {
    const std::string probe = std::string(python) + " -c 'import matplotlib' >/dev/null 2>&1";
    if (std::system(probe.c_str()) == 0) return python;
  }
  return "";
}

std::string head(const std::filesystem::path& path, size_t bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string text(bytes, '\0');
  in.read(text.data(), static_cast<std::streamsize>(bytes));
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

void expect_images(const std::filesystem::path& prefix) {
  for (const char* extension : {".png", ".pdf"}) {
    const auto path = prefix.string() + extension;
    ASSERT_TRUE(std::filesystem::exists(path)) << path;
    EXPECT_GT(std::filesystem::file_size(path), 1000u) << path;
  }
  EXPECT_EQ(head(prefix.string() + ".png", 8), "\x89PNG\r\n\x1a\n");
  EXPECT_EQ(head(prefix.string() + ".pdf", 4), "%PDF");
}

TEST(Figures, ScriptsMakeTheThreeFiguresFromToolOutput) {
  const std::string python = python_with_matplotlib();
  if (python.empty()) GTEST_SKIP() << "python3 with matplotlib is missing (Debian: apt-get install python3-matplotlib)";
  auto dir = scratch_dir("figures");
  // The reference tiny GPT-2 where ../shared is present, else the embedded demo model.
  nlohmann::json config;
  const bool shared = !test::shared_dir().empty();
  if (shared) {
    const auto& gpt2 = test::golden_reference()["gpt2"];
    nlohmann::json requests = nlohmann::json::array();
    for (const auto& c : gpt2["cases"])
      if (c["mode"] == "rome") requests.push_back(c["request"]);
    config = {{"model", test::reference_model_dir("gpt2")},
              {"tokenizer", test::shared_path("tokenizers/gpt2").string()},
              {"add_bos", false},
              {"context_templates", gpt2["context_templates"]},
              {"requests", requests},
              {"perplexity", {{"texts", test::shared_path("data/me-ppl/ME-PPL_50.json").string()}}}};
  } else {
    std::ifstream demo(std::filesystem::path(ROME_SOURCE_DIR) / "configs/demo.json");
    config = nlohmann::json::parse(demo);
    config["perplexity"]["texts"] = (std::filesystem::path(ROME_SOURCE_DIR) / "data/demo_texts.txt").string();
  }
  config["methods"] = {"rome", "c-rome"};
  config["hparams"] = {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 5}};
  {
    std::ofstream out(dir / "config.json");
    out << config.dump(1);
  }
  const std::string cfg = (dir / "config.json").string();
  auto result = run_cli("check --config " + cfg + " --json " + (dir / "check.json").string());
  ASSERT_TRUE(result.exit_code == 0 || result.exit_code == 1) << result.out << result.err;
  result = run_cli("keys --config " + cfg + " --out " + (dir / "keys.npz").string() + " --json " +
                   (dir / "keys.json").string() + " --prefix-tokens 1 2");
  ASSERT_EQ(result.exit_code, 0) << result.out << result.err;
  result = run_cli("edit --config " + cfg + " --out " + (dir / "edit.json").string());
  ASSERT_EQ(result.exit_code, 0) << result.out << result.err;

  const std::string script = python + " " + (std::filesystem::path(ROME_SOURCE_DIR) / "scripts/figures.py").string();
  auto run = [&](const std::string& args) {
    const std::string command = script + " " + args + " >" + (dir / "figures.log").string() + " 2>&1";
    return std::system(command.c_str());
  };
  ASSERT_EQ(run("denominators " + (dir / "check.json").string() + " --out " + (dir / "a").string()), 0)
      << head(dir / "figures.log", 4000);
  expect_images(dir / "a");
  ASSERT_EQ(run("pca " + (dir / "keys.json").string() + " --out " + (dir / "b").string()), 0)
      << head(dir / "figures.log", 4000);
  expect_images(dir / "b");
  ASSERT_EQ(run("ppl " + (dir / "edit.json").string() + " --out " + (dir / "c").string()), 0)
      << head(dir / "figures.log", 4000);
  expect_images(dir / "c");
  // auto: one figure per input, chosen from its content.
  ASSERT_EQ(run("auto " + (dir / "check.json").string() + " " + (dir / "keys.json").string() + " " +
                (dir / "edit.json").string() + " --out-dir " + (dir / "auto").string()),
            0)
      << head(dir / "figures.log", 4000);
  expect_images(dir / "auto/check-denominators");
  expect_images(dir / "auto/keys-pca");
  expect_images(dir / "auto/edit-ppl");
  // A file that is none of these is an error, not an empty figure.
  {
    std::ofstream out(dir / "other.json");
    out << "{\"hello\": 1}";
  }
  EXPECT_NE(run("auto " + (dir / "other.json").string() + " --out-dir " + (dir / "auto").string()), 0);
}

// Without matplotlib the script says how to get it (Debian's package) instead of a traceback. A
// stand-in matplotlib package that fails to import makes any python3 look like one without it.
TEST(Figures, MissingMatplotlibNamesThePackage) {
  if (std::system("python3 -c '' >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
  auto dir = scratch_dir("figures-no-matplotlib");
  std::filesystem::create_directories(dir / "stub" / "matplotlib");
  std::ofstream(dir / "stub" / "matplotlib" / "__init__.py") << "raise ImportError('no matplotlib here')\n";
  const std::string command = "PYTHONPATH=" + (dir / "stub").string() + " python3 " +
                              (std::filesystem::path(ROME_SOURCE_DIR) / "scripts/figures.py").string() +
                              " pca keys.json --out x >" + (dir / "log").string() + " 2>&1";
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
  const std::string log = head(dir / "log", 4000);
  EXPECT_NE(log.find("apt-get install python3-matplotlib"), std::string::npos) << log;
  EXPECT_EQ(log.find("Traceback"), std::string::npos) << log;
}

}  // namespace
}  // namespace rc
