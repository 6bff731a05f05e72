// The model-core commands end to end: `generate` on the real stories260K model against llama2.c's
// expected text, `perplexity` against the golden value, and malformed inputs refused with a
// message naming the file and the problem and a non-zero exit.
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "rome_collapse/util/files.h"
#include "support/golden.h"

namespace rc {
namespace {

std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

TEST(GenerateCommand, Stories260KGreedyMatchesLlama2c) {
  ROME_REQUIRE_SHARED();
  const auto model = test::shared_path("models/stories260K/stories260K.bin");
  auto result = test::run_cli("generate --model " + quoted(model) + " --max-new-tokens 200");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out, read_file(test::shared_path("models/stories260K/expected_greedy_200.txt")));
}

TEST(GenerateCommand, Stories260KWithSentencePieceTokenizer) {
  ROME_REQUIRE_SHARED();
  auto result = test::run_cli("generate --model " + quoted(test::shared_path("models/stories260K/stories260K.bin")) +
                              " --tokenizer " + quoted(test::shared_path("models/stories260K/tok512.model")) +
                              " --max-new-tokens 200");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out, read_file(test::shared_path("models/stories260K/expected_greedy_200.txt")));
}

TEST(GenerateCommand, AidreamsWithoutGqaLoadsAndGenerates) {
  ROME_REQUIRE_SHARED();
  auto result = test::run_cli("generate --model " + quoted(test::shared_path("models/aidreams260K/aidreams260K.bin")) +
                              " --max-new-tokens 60");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_GT(result.out.size(), 40u);
  // Seeded top-k sampling is reproducible and differs from greedy.
  const std::string sample = "generate --model " + quoted(test::shared_path("models/aidreams260K/aidreams260K.bin")) +
                             " --max-new-tokens 60 --top-k 5 --seed 7";
  auto first = test::run_cli(sample), second = test::run_cli(sample);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(first.out, second.out);
  EXPECT_NE(first.out, result.out);
}

TEST(PerplexityCommand, PrintsThePapersPerplexity) {
  ROME_REQUIRE_SHARED();
  auto result = test::run_cli("perplexity --model " + quoted(test::shared_path("reference/tiny-gpt2")) + " --tokenizer " +
                              quoted(test::shared_path("tokenizers/gpt2")) + " --texts " +
                              quoted(test::shared_path("data/me-ppl/ME-PPL_50.json")));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  auto json = nlohmann::json::parse(result.out);
  EXPECT_EQ(json["per_text"].size(), 50u);
  EXPECT_TRUE(test::scalar_close_rel(json["mean"], test::golden_reference()["gpt2"]["ppl_before"], 1e-3, "ppl"));
  EXPECT_LE(json["median"].get<double>(), json["mean"].get<double>() * 10);
  EXPECT_TRUE(json.contains("mean_log"));
}

TEST(PerplexityCommand, ReadsJsonlAndPlainLines) {
  ROME_REQUIRE_SHARED();
  auto dir = test::scratch_dir("ppl-formats");
  write_file_atomic(dir / "texts.jsonl", "{\"text\": \"The cat sat on the mat.\"}\n{\"text\": \"Hello there, world.\"}\n");
  write_file_atomic(dir / "texts.txt", "The cat sat on the mat.\n\nHello there, world.\n");
  const std::string base = "perplexity --model " + quoted(test::shared_path("reference/tiny-gpt2")) + " --tokenizer " +
                           quoted(test::shared_path("tokenizers/gpt2")) + " --texts ";
  auto jsonl = test::run_cli(base + quoted(dir / "texts.jsonl"));
  auto plain = test::run_cli(base + quoted(dir / "texts.txt"));
  ASSERT_EQ(jsonl.exit_code, 0) << jsonl.err;
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(nlohmann::json::parse(jsonl.out)["per_text"], nlohmann::json::parse(plain.out)["per_text"]);
  EXPECT_EQ(nlohmann::json::parse(plain.out)["per_text"].size(), 2u);
}

// A copy of tiny-gpt2 in a scratch directory, to be damaged by each test.
std::filesystem::path copy_of_tiny_gpt2(const std::string& name) {
  auto dir = test::scratch_dir(name);
  for (const char* file : {"config.json", "model.safetensors"})
    std::filesystem::copy_file(test::shared_path(std::string("reference/tiny-gpt2/") + file), dir / file);
  return dir;
}

void expect_refused(const std::string& args, const std::vector<std::string>& message_parts) {
  auto result = test::run_cli(args);
  EXPECT_EQ(result.exit_code, 2) << args << "\nstderr: " << result.err;
  for (const auto& part : message_parts) EXPECT_NE(result.err.find(part), std::string::npos) << "missing '" << part << "' in: " << result.err;
}

TEST(MalformedInputs, AreRefusedWithTheFileAndTheProblem) {
  ROME_REQUIRE_SHARED();
  const std::string tokenizer = " --tokenizer " + quoted(test::shared_path("tokenizers/gpt2"));
  const std::string gen = " --max-new-tokens 2";

  auto truncated = copy_of_tiny_gpt2("malformed-truncated");
  std::filesystem::resize_file(truncated / "model.safetensors", std::filesystem::file_size(truncated / "model.safetensors") - 100);
  expect_refused("generate --model " + quoted(truncated) + tokenizer + gen, {(truncated / "model.safetensors").string()});

  auto header = copy_of_tiny_gpt2("malformed-header");
  {
    std::fstream file(header / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    uint64_t huge = uint64_t(1) << 40;
    file.write(reinterpret_cast<const char*>(&huge), 8);
  }
  expect_refused("generate --model " + quoted(header) + tokenizer + gen, {(header / "model.safetensors").string(), "header"});

  auto model_type = copy_of_tiny_gpt2("malformed-model-type");
  {
    auto config = nlohmann::json::parse(read_file(model_type / "config.json"));
    config["model_type"] = "mamba";
    write_file_atomic(model_type / "config.json", config.dump());
  }
  expect_refused("generate --model " + quoted(model_type) + tokenizer + gen, {"config.json", "model_type", "mamba"});

  auto shape = copy_of_tiny_gpt2("malformed-shape");
  {
    auto config = nlohmann::json::parse(read_file(shape / "config.json"));
    config["n_embd"] = 128;
    write_file_atomic(shape / "config.json", config.dump());
  }
  expect_refused("generate --model " + quoted(shape) + tokenizer + gen, {"shape"});

  auto no_tokenizer = copy_of_tiny_gpt2("malformed-no-tokenizer");
  expect_refused("generate --model " + quoted(no_tokenizer) + gen, {no_tokenizer.string(), "tokenizer"});

  auto pickle = test::scratch_dir("malformed-pickle");
  std::filesystem::copy_file(test::shared_path("reference/tiny-gpt2/config.json"), pickle / "config.json");
  write_file_atomic(pickle / "pytorch_model.bin", std::string("\x80\x02}q\x00.", 6));
  expect_refused("generate --model " + quoted(pickle) + tokenizer + gen, {"safetensors"});

  expect_refused("perplexity --model " + quoted(test::shared_path("reference/tiny-gpt2")) + tokenizer +
                     " --texts /nonexistent/texts.json",
                 {"/nonexistent/texts.json"});
  expect_refused("generate --model /nonexistent/model" + tokenizer + gen, {"/nonexistent/model"});
  expect_refused("generate --model " + quoted(test::shared_path("reference/tiny-gpt2")) + tokenizer + " --max-new-tokens 0",
                 {"max-new-tokens"});
}

}  // namespace
}  // namespace rc
