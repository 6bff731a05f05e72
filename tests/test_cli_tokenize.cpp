// `rome-collapse tokenize` end to end: ids, pieces and byte offsets as JSON, the subject's token
// span next to ROME's subject_last_index, special tokens on request, the files with their sha256,
// and bad invocations refused with exit code 2.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace rc {
namespace {

using json = nlohmann::json;

std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

json run_json(const std::string& args) {
  auto result = test::run_cli(args);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  return result.exit_code == 0 ? json::parse(result.out) : json();
}

TEST(TokenizeCommand, Llama3SubjectSpanAndOffsets) {
  ROME_REQUIRE_SHARED();
  const auto dir = test::shared_path("tokenizers/llama3");
  json out = run_json("tokenize --tokenizer " + quoted(dir) +
                      " --text 'The mother tongue of Danielle Darrieux is' --subject 'Danielle Darrieux'");
  ASSERT_TRUE(out.is_object());
  EXPECT_EQ(out["ids"], json({791, 6691, 25466, 315, 72716, 15367, 7379, 2249, 374}));  // expected.json rome_3
  EXPECT_EQ(out["pieces"][4], "\xC4\xA0" "Danielle");
  EXPECT_EQ(out["offsets"][4], json({20, 29}));  // the token starts at the space before the subject
  const json& subject = out["subject"];
  EXPECT_EQ(subject["byte_begin"], 21);
  EXPECT_EQ(subject["first_token"], 4);
  EXPECT_EQ(subject["last_token"], 7);
  EXPECT_EQ(subject["rome_last_index"], 7);
  EXPECT_EQ(subject["starts_inside_token"], true);
  ASSERT_EQ(out["files"].size(), 1u);
  EXPECT_EQ(out["files"][0]["sha256"], sha256_file(dir / "tokenizer.json"));
}

TEST(TokenizeCommand, SpecialTokensOnRequestAndFileInput) {
  ROME_REQUIRE_SHARED();
  auto text_file = test::scratch_dir("tokenize-cli") / "text.txt";
  std::ofstream(text_file) << "Hello world";
  const std::string base = "tokenize --model " + quoted(test::shared_path("tokenizers/mistral")) + " --file " + quoted(text_file);
  json plain = run_json(base);
  json special = run_json(base + " --special");
  EXPECT_EQ(plain["ids"], json({22557, 1526}));
  EXPECT_EQ(special["ids"], json({1, 22557, 1526}));
  EXPECT_EQ(special["pieces"][0], "<s>");
  EXPECT_EQ(special["offsets"][0], json({0, 0}));
}

TEST(TokenizeCommand, BadInvocationsExitWithInputError) {
  ROME_REQUIRE_SHARED();
  const std::string tokenizer = " --tokenizer " + quoted(test::shared_path("tokenizers/qwen2"));
  auto no_text = test::run_cli("tokenize" + tokenizer);
  EXPECT_EQ(no_text.exit_code, 2);
  EXPECT_NE(no_text.err.find("--text"), std::string::npos) << no_text.err;
  auto no_subject = test::run_cli("tokenize" + tokenizer + " --text 'Paris is nice' --subject Rome");
  EXPECT_EQ(no_subject.exit_code, 2);
  EXPECT_NE(no_subject.err.find("Rome"), std::string::npos) << no_subject.err;
  auto dir = test::scratch_dir("tokenize-cli-unsupported");
  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})";
  auto refused = test::run_cli("tokenize --tokenizer " + quoted(dir) + " --text hi");
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_NE(refused.err.find("'WordPiece'"), std::string::npos) << refused.err;
}

}  // namespace
}  // namespace rc
