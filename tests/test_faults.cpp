// Faults and hostile runs of issue 17, through the CLI: two runs on one directory, a resume into
// changed inputs, a stale lock, signals, write failures (ulimit -f, a closed pipe, an unwritable
// directory), temporaries left by a killed writer, non-finite weights, documented bounds, a
// tokenizer that does not belong to its model. Every case checks the exit code and that the
// message names what is wrong.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/io/safetensors.h"
#include "rome_collapse/model/checkpoint.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace rc {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string quote(const fs::path& path) { return "'" + path.string() + "'"; }

std::string cli() {
  const char* env = std::getenv("ROME_CLI");
  return env ? env : std::string(ROME_BINARY_DIR) + "/rome-collapse";
}

void put(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

// Runs `script` with bash; its exit status (-1 when it did not exit normally).
int bash(const std::string& script) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/bash", "bash", "-c", script.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A pid that no process has: a child that has exited and been reaped.
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

int wait_exit_code(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::vector<json> result_lines(const fs::path& results) {
  std::vector<json> lines;
  std::istringstream in(test::read_if_exists(results));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(json::parse(line));
  return lines;
}

// Every (case, method) at most once; how many there are.
size_t expect_no_duplicates(const fs::path& results) {
  std::set<std::pair<int64_t, std::string>> seen;
  for (const json& line : result_lines(results)) {
    const auto key = std::make_pair(line.at("case_id").get<int64_t>(), line.at("method").get<std::string>());
    EXPECT_TRUE(seen.insert(key).second) << "case " << key.first << " (" << key.second << ") written twice";
  }
  return seen.size();
}

// A small batch run on tiny-gpt2: `cases` zsRE records copied into dir/data.json, few steps.
fs::path write_batch_config(const fs::path& dir, int cases, bool perplexity = false) {
  const json zsre = json::parse(test::read_if_exists(test::shared_path("data/zsre/zsre_mend_train-1k.json")));
  put(dir / "data.json", json(std::vector<json>(zsre.begin(), zsre.begin() + cases)).dump());
  json config = {{"model", test::shared_path("reference/tiny-gpt2").string()},
                 {"tokenizer", test::shared_path("tokenizers/gpt2").string()},
                 {"add_bos", false},
                 {"methods", {"rome", "c-rome"}},
                 {"dataset", {{"path", (dir / "data.json").string()}}},
                 {"hparams", {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 2}}},
                 {"context_templates", {"{}", "The company. {}"}}};
  if (perplexity) {
    put(dir / "ppl.txt", "Once upon a time there was a girl.\n");
    config["perplexity"] = {{"texts", (dir / "ppl.txt").string()}};
  }
  put(dir / "run.json", config.dump(1));
  return dir / "run.json";
}

// ---- batch: one run per directory, resumes only into the same inputs -------------------------

TEST(Faults, TwoBatchRunsOnOneDirectoryOneIsRefusedNoLineTwice) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("faults-batch-concurrent"), out = dir / "out";
  const fs::path config = write_batch_config(dir, 3);
  const std::vector<std::string> args = {"batch", "--config", config.string(), "--out", out.string()};
  const pid_t first = test::spawn_cli(args, dir / "first.err"), second = test::spawn_cli(args, dir / "second.err");
  const int first_code = wait_exit_code(first), second_code = wait_exit_code(second);
  const std::string first_err = test::read_if_exists(dir / "first.err"),
                    second_err = test::read_if_exists(dir / "second.err");
  // Exactly one ran; the other was refused, naming the holder's pid.
  ASSERT_EQ(std::multiset<int>({first_code, second_code}), std::multiset<int>({0, 2})) << first_err << "\n" << second_err;
  const std::string& refused = first_code == 2 ? first_err : second_err;
  const pid_t holder = first_code == 2 ? second : first;
  EXPECT_NE(refused.find("in use by another run: pid " + std::to_string(holder)), std::string::npos) << refused;
  EXPECT_NE(refused.find((out / ".lock").string()), std::string::npos) << refused;
  EXPECT_EQ(expect_no_duplicates(out / "results.jsonl"), 6u);
  EXPECT_FALSE(fs::exists(out / ".lock")) << "the lock file outlived its run";

  // A rerun finds everything done and adds nothing.
  auto rerun = test::run_cli("batch --config " + quote(config) + " --out " + quote(out));
  EXPECT_EQ(rerun.exit_code, 0) << rerun.err;
  EXPECT_EQ(result_lines(out / "results.jsonl").size(), 6u);

  // A journal that holds a line twice (as two unlocked runs used to write) is refused, not counted.
  const std::string journal = test::read_if_exists(out / "results.jsonl");
  put(out / "results.jsonl", journal + journal.substr(0, journal.find('\n') + 1));
  rerun = test::run_cli("batch --config " + quote(config) + " --out " + quote(out));
  EXPECT_EQ(rerun.exit_code, 2) << rerun.err;
  EXPECT_NE(rerun.err.find("appears twice"), std::string::npos) << rerun.err;
}

TEST(Faults, ALockLeftByADeadProcessIsTakenOver) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("faults-batch-stale-lock"), out = dir / "out";
  const fs::path config = write_batch_config(dir, 1);
  const pid_t dead = dead_pid();
  put(out / ".lock", "pid " + std::to_string(dead) + " (started 2026-01-01T00:00:00Z, command: rome-collapse batch)\n");
  auto run = test::run_cli("batch --config " + quote(config) + " --out " + quote(out));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(run.err.find("taking over the lock"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("pid " + std::to_string(dead)), std::string::npos) << run.err;
  EXPECT_EQ(expect_no_duplicates(out / "results.jsonl"), 2u);
}

TEST(Faults, AResumeIntoChangedInputsIsRefusedListingThem) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("faults-batch-fingerprint"), out = dir / "out";
  const fs::path config = write_batch_config(dir, 2, /*perplexity=*/true);
  const std::string command = "batch --config " + quote(config) + " --out " + quote(out);
  auto run = test::run_cli(command + " --max-edits 1");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  ASSERT_EQ(result_lines(out / "results.jsonl").size(), 1u);
  const std::string dataset = test::read_if_exists(dir / "data.json"), texts = test::read_if_exists(dir / "ppl.txt");

  // The dataset and the perplexity texts changed (the config did not): both listed, nothing appended.
  put(dir / "data.json", dataset.substr(0, dataset.size() - 1) + " ]");
  put(dir / "ppl.txt", "A different text.\n");
  run = test::run_cli(command);
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_NE(run.err.find("inputs changed"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("dataset: " + fs::weakly_canonical(dir / "data.json").string() + ": content changed"),
            std::string::npos)
      << run.err;
  EXPECT_NE(run.err.find("perplexity_texts: "), std::string::npos) << run.err;
  EXPECT_EQ(result_lines(out / "results.jsonl").size(), 1u);

  // Restored: the run resumes and completes.
  put(dir / "data.json", dataset);
  put(dir / "ppl.txt", texts);
  run = test::run_cli(command);
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(expect_no_duplicates(out / "results.jsonl"), 4u);
}

// ---- write failures ---------------------------------------------------------------------------

TEST(Faults, AnUnwritableOutputIsAClearInputError) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("faults-unwritable");
  const fs::path config = write_batch_config(dir, 1);
  put(dir / "file", "a file where a directory is needed");
  for (const fs::path& out : {fs::path("/sys/rome-collapse-test-out"), dir / "file" / "out"}) {
    auto run = test::run_cli("batch --config " + quote(config) + " --out " + quote(out));
    EXPECT_EQ(run.exit_code, 2) << out << ": " << run.err;
    EXPECT_EQ(run.err.rfind("error: ", 0), 0u) << run.err;
    EXPECT_NE(run.err.find(out.string()), std::string::npos) << run.err;
    EXPECT_EQ(run.err.find("internal error"), std::string::npos) << run.err;
  }
}

// An edit config on the embedded model, `extra` merged in.
fs::path write_edit_config(const fs::path& path, const json& extra = json::object()) {
  json config = {{"model", "builtin:demo-gpt2"},
                 {"request", {{"prompt", "{} is a citizen of"}, {"subject", "Leonardo"}, {"target_new", "Japan"}}},
                 {"hparams", {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 2}}},
                 {"context_templates", {"{}", "The company. {}"}}};
  config.update(extra);
  put(path, config.dump(1));
  return path;
}

bool has_temporaries(const fs::path& dir) {
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.path().filename().string().find(".tmp.") != std::string::npos) return true;
  return false;
}

TEST(Faults, WritesBeyondUlimitFAreReportedAndLeaveNoTemporaries) {
  const fs::path dir = test::scratch_dir("faults-ulimit");
  const fs::path config = write_edit_config(dir / "edit.json", {{"dump_vectors", true}});
  const int code = bash("ulimit -f 1; exec " + cli() + " edit --config " + quote(config) + " --out " +
                        quote(dir / "out/result.json") + " 2>" + quote(dir / "edit.err"));
  const std::string err = test::read_if_exists(dir / "edit.err");
  EXPECT_EQ(code, 2) << err;  // not 153 (SIGXFSZ)
  EXPECT_NE(err.find((dir / "out/result.json").string()), std::string::npos) << err;
  EXPECT_NE(err.find("File too large"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir / "out/result.json"));
  EXPECT_FALSE(has_temporaries(dir));

  if (test::shared_dir().empty()) return;
  const fs::path batch_config = write_batch_config(dir / "batch", 1);
  const int batch_code = bash("ulimit -f 1; exec " + cli() + " batch --config " + quote(batch_config) + " --out " +
                              quote(dir / "batch/out") + " 2>" + quote(dir / "batch.err"));
  const std::string batch_err = test::read_if_exists(dir / "batch.err");
  EXPECT_EQ(batch_code, 2) << batch_err;
  EXPECT_NE(batch_err.find("File too large"), std::string::npos) << batch_err;
  EXPECT_FALSE(has_temporaries(dir / "batch"));
}

TEST(Faults, TemporariesOfADeadWriterAreSweptOthersKept) {
  const fs::path dir = test::scratch_dir("faults-sweep");
  const fs::path config = write_edit_config(dir / "edit.json");
  const std::string dead = "result.json.tmp." + std::to_string(dead_pid()) + ".0";
  const std::string alive = "result.json.tmp." + std::to_string(::getpid()) + ".3";  // this test is running
  for (const std::string& name : {dead, alive, std::string("notes.tmp.txt")}) put(dir / "out" / name, "partial");
  auto run = test::run_cli("edit --config " + quote(config) + " --out " + quote(dir / "out/result.json"));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_FALSE(fs::exists(dir / "out" / dead)) << "a dead writer's temporary was not swept";
  EXPECT_TRUE(fs::exists(dir / "out" / alive)) << "a live writer's temporary was removed";
  EXPECT_TRUE(fs::exists(dir / "out/notes.tmp.txt")) << "a file that is not ours was removed";
}

TEST(Faults, CheckKeepsItsVerdictWhenTheReaderClosesThePipe) {
  const std::string check = cli() + " check --config " + quote(fs::path(ROME_SOURCE_DIR) / "configs/check-example.json");
  // `true` reads nothing and exits: every write of check meets a closed pipe (was: exit 141).
  EXPECT_EQ(bash("set -o pipefail; " + check + " 2>/dev/null | true"), 1);
  EXPECT_EQ(bash("set -o pipefail; " + check + " 2>/dev/null | head -c 10 >/dev/null"), 1);
  EXPECT_EQ(bash("set -o pipefail; " + check + " --requests " +
                 quote(fs::path(ROME_SOURCE_DIR) / "data/check_requests.json") + " 2>/dev/null | true"),
            0);
}

// ---- signals ------------------------------------------------------------------------------------

TEST(Faults, StatsRefusesASecondRunAndExits143OnSigterm) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("faults-stats"), out = dir / "c.npz";
  const std::vector<std::string> args = {
      "stats", "--model", test::shared_path("reference/tiny-gpt2").string(), "--tokenizer",
      test::shared_path("tokenizers/gpt2").string(), "--no-bos", "--layer", "1", "--corpus",
      test::shared_path("data/corpus/wikitext-2-valid.txt").string(), "--samples", "2000", "--batch-size", "2",
      "--checkpoint-every", "1000000", "--out", out.string()};
  const pid_t pid = test::spawn_cli(args, dir / "first.err");
  bool started = false;
  for (int i = 0; i < 3000 && !started; ++i) {
    started = test::read_if_exists(dir / "first.err").find(" layer ") != std::string::npos;
    if (!started) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(started) << test::read_if_exists(dir / "first.err");
  std::string second;
  for (const auto& a : args) second += quote(a) + " ";
  auto refused = test::run_cli(second);
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_NE(refused.err.find("in use by another run: pid " + std::to_string(pid)), std::string::npos) << refused.err;

  ::kill(pid, SIGTERM);
  const int code = wait_exit_code(pid);
  const std::string err = test::read_if_exists(dir / "first.err");
  if (err.find("stats: wrote") != std::string::npos) GTEST_SKIP() << "the run finished before SIGTERM";
  EXPECT_EQ(code, 143) << err;
  EXPECT_NE(err.find("SIGTERM"), std::string::npos) << err;
  EXPECT_TRUE(fs::exists(out.string() + ".partial.npz")) << err;
}

// ---- models: non-finite weights, a tokenizer of another model --------------------------------

TEST(Faults, NonFiniteWeightsAreRefusedAtLoadNamingTensorAndFile) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("faults-nonfinite"), tiny = test::shared_path("reference/tiny-gpt2");
  Checkpoint checkpoint = load_checkpoint(tiny, at::kFloat);
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, tensor] : checkpoint.tensors) tensors[name] = tensor.clone();
  tensors["transformer.wte.weight"].fill_(std::numeric_limits<float>::infinity());
  write_safetensors(dir / "inf/model.safetensors", tensors);
  put(dir / "inf/config.json", test::read_if_exists(tiny / "config.json"));
  const std::string file = (dir / "inf/model.safetensors").string(), tok = quote(test::shared_path("tokenizers/gpt2"));
  put(dir / "texts.txt", "one text\n");
  const fs::path config = write_edit_config(dir / "edit.json", {{"model", (dir / "inf").string()}, {"tokenizer", test::shared_path("tokenizers/gpt2").string()}});
  for (const std::string& args :
       {"generate --model " + quote(dir / "inf") + " --tokenizer " + tok + " --prompt 'The' --max-new-tokens 2",
        "perplexity --model " + quote(dir / "inf") + " --tokenizer " + tok + " --texts " + quote(dir / "texts.txt"),
        "edit --config " + quote(config)}) {
    auto run = test::run_cli(args);
    EXPECT_EQ(run.exit_code, 3) << args << "\n" << run.err;
    EXPECT_NE(run.err.find(file), std::string::npos) << run.err;
    EXPECT_NE(run.err.find("tensor 'transformer.wte.weight'"), std::string::npos) << run.err;
    EXPECT_NE(run.err.find("non-finite"), std::string::npos) << run.err;
    EXPECT_TRUE(run.out.empty()) << run.out;
  }

  // A llama2.c file with one NaN in its embedding.
  std::string bytes = test::read_if_exists(test::shared_path("models/stories260K/stories260K.bin"));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  bytes.replace(28 + 4 * 5, 4, std::string(reinterpret_cast<const char*>(&nan), 4));
  put(dir / "nan.bin", bytes);
  try {
    (void)load_checkpoint(dir / "nan.bin", at::kFloat);
    ADD_FAILURE() << "a NaN weight was accepted";
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "nan.bin").string() + ": tensor 'model.embed_tokens.weight' holds 1 "
                                                                        "non-finite value (the first, at flat index 5"),
              std::string::npos)
        << e.what();
  }
}

TEST(Faults, FiniteWeightsWhoseSumOverflowsTheDtypeAreAccepted) {
  ROME_REQUIRE_SHARED();
  // 60000 is finite in float16 (max 65504), but a float16 sum of many of them is Inf: the quick
  // sum test must fall back to the element-wise count instead of refusing a sound checkpoint.
  const fs::path dir = test::scratch_dir("faults-sum-overflow"), tiny = test::shared_path("reference/tiny-gpt2");
  Checkpoint checkpoint = load_checkpoint(tiny, at::kFloat);
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, tensor] : checkpoint.tensors) tensors[name] = tensor.clone();
  tensors["transformer.wte.weight"].fill_(60000.0f);
  write_safetensors(dir / "big/model.safetensors", tensors);
  put(dir / "big/config.json", test::read_if_exists(tiny / "config.json"));
  ASSERT_FALSE(std::isfinite(tensors["transformer.wte.weight"].to(at::kHalf).sum().item<double>()));
  Checkpoint loaded = load_checkpoint(dir / "big", at::kHalf);
  EXPECT_EQ(loaded.tensors.at("transformer.wte.weight").scalar_type(), at::kHalf);
}

TEST(Faults, ASentencePieceTokenizerOfAnotherModelIsAnInputErrorNamingBoth) {
  ROME_REQUIRE_SHARED();
  const fs::path llama = test::shared_path("reference/tiny-llama"), tok512 = test::shared_path("models/stories260K/tok512.model");
  // The model's ids run past the tokenizer's 512 pieces.
  auto run = test::run_cli("generate --model " + quote(llama) + " --tokenizer " + quote(tok512) + " --max-new-tokens 40");
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_NE(run.err.find(llama.string()), std::string::npos) << run.err;
  EXPECT_NE(run.err.find(tok512.string()), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("does not belong"), std::string::npos) << run.err;
}

TEST(Faults, ATokenizerLargerThanTheModelsEmbeddingIsAnInputErrorNamingBoth) {
  ROME_REQUIRE_SHARED();
  // The tokenizer's ids run past the model's embedding.
  const fs::path stories = test::shared_path("models/stories260K/stories260K.bin"), gpt2 = test::shared_path("tokenizers/gpt2");
  auto run = test::run_cli("generate --model " + quote(stories) + " --tokenizer " + quote(gpt2) + " --max-new-tokens 4");
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_NE(run.err.find(stories.string()), std::string::npos) << run.err;
  EXPECT_NE(run.err.find(gpt2.string()), std::string::npos) << run.err;
}

// ---- documented bounds and invalid settings, refused before any work ------------------------

TEST(Faults, BoundsAndInvalidSettingsAreRefusedBeforeWork) {
  const fs::path dir = test::scratch_dir("faults-bounds");
  std::vector<std::string> many_templates = {"{}"};
  for (int i = 0; i < 10000; ++i) many_templates.push_back("Text " + std::to_string(i) + ". {}");
  struct Bad {
    std::string name;
    json extra;
    std::vector<std::string> parts;
  };
  const std::vector<Bad> cases = {
      {"v_num_grad_steps 1e9", {{"hparams", {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 1000000000}}}},
       {"hparams.v_num_grad_steps", "1000000000", "[1, 10000]"}},
      {"clamp_norm_factor 0", {{"hparams", {{"layer", 1}, {"v_loss_layer", 3}, {"clamp_norm_factor", 0}}}},
       {"hparams.clamp_norm_factor", "must be positive"}},
      {"v_weight_decay -1", {{"hparams", {{"layer", 1}, {"v_loss_layer", 3}, {"v_weight_decay", -1}}}},
       {"hparams.v_weight_decay", "non-negative"}},
      {"generated template length 10,000,000",
       {{"context_templates", {{"generate", {{"lengths", {{10000000, 10}}}}}}}},
       {"context_templates.generate.lengths[0]: length in tokens", "[1, 1024]"}},
      {"10,001 explicit templates", {{"context_templates", many_templates}}, {"number of templates", "[1, 256]"}},
      {"10 MB prompt",
       {{"request", {{"prompt", std::string(10 << 20, 'a') + " {} is"}, {"subject", "X"}, {"target_new", "Y"}}}},
       {"request.prompt", "above the bound of 262144 bytes"}},
      {"dtype float8", {{"dtype", "float8"}}, {"field \"dtype\"", "float8"}},
  };
  for (const Bad& bad : cases) {
    const fs::path config = write_edit_config(dir / (std::to_string(&bad - cases.data()) + ".json"), bad.extra);
    const auto start = Clock::now();
    auto run = test::run_cli("edit --config " + quote(config));
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    EXPECT_EQ(run.exit_code, 2) << bad.name << ": " << run.err;
    EXPECT_NE(run.err.find(config.string()), std::string::npos) << bad.name << ": " << run.err;
    for (const auto& part : bad.parts) EXPECT_NE(run.err.find(part), std::string::npos) << bad.name << ": " << run.err;
    EXPECT_LT(run.err.size(), 1000u) << bad.name;
    EXPECT_LT(seconds, 10.0) << bad.name << ": refused only after " << seconds << " s";
  }
  if (!at::hasCUDA()) {
    const fs::path config = write_edit_config(dir / "cuda.json", {{"device", "cuda"}});
    auto run = test::run_cli("edit --config " + quote(config));
    EXPECT_EQ(run.exit_code, 2) << run.err;
    EXPECT_NE(run.err.find(config.string() + ": field \"device\""), std::string::npos) << run.err;
  }
  // A key given twice: which one counts would be a guess.
  put(dir / "twice.json", R"({"model": "builtin:demo-gpt2", "model": "builtin:demo-gpt2"})");
  auto run = test::run_cli("edit --config " + quote(dir / "twice.json"));
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_NE(run.err.find("duplicate key \"model\""), std::string::npos) << run.err;
}

TEST(Faults, DeeplyNestedConfigJsonIsRefusedNotACrash) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("faults-deep");
  std::string config = test::read_if_exists(test::shared_path("reference/tiny-gpt2/config.json"));
  const size_t at = config.find("\"n_layer\": ") + 11;
  config = config.substr(0, at) + std::string(100000, '[') + "2" + std::string(100000, ']') +
           config.substr(config.find_first_of(",}", at));
  put(dir / "m/config.json", config);
  fs::create_symlink(test::shared_path("reference/tiny-gpt2/model.safetensors"), dir / "m/model.safetensors");
  auto run = test::run_cli("generate --model " + quote(dir / "m") + " --tokenizer " +
                           quote(test::shared_path("tokenizers/gpt2")) + " --max-new-tokens 1");
  EXPECT_EQ(run.exit_code, 2) << run.err;  // was 139
  EXPECT_NE(run.err.find((dir / "m/config.json").string() + ": not valid JSON: nested deeper than 64 levels"),
            std::string::npos)
      << run.err;
  EXPECT_LT(run.err.size(), 1000u);
}

}  // namespace
}  // namespace rc
