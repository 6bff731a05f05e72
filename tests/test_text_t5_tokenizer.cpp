// T5's tokenizer: the real t5-small spiece.model against ids from SentencePiece with Hugging Face's
// T5Tokenizer convention ("</s>" appended, no BOS), chosen by load_tokenizer for a T5 folder.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/text/sentencepiece_tokenizer.h"
#include "rome_collapse/text/tokenizer.h"
#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace rc {
namespace {

using Ids = std::vector<int64_t>;

// What a T5 model input is: the text's ids and the appended "</s>".
Ids with_special(const Tokenizer& tokenizer, const std::string& text) {
  Ids ids = tokenizer.encode(text, tokenizer.adds_bos_by_default());
  if (auto eos = tokenizer.appended_eos_id()) ids.push_back(*eos);
  return ids;
}

TEST(T5Tokenizer, T5SmallSpieceMatchesExpectedIdsSpecialIdsAndDecode) {
  ROME_REQUIRE_SHARED();
  const auto dir = test::shared_path("tokenizers/t5");
  const auto expected = nlohmann::json::parse(read_file(dir / "expected.json"));
  auto tokenizer = load_tokenizer(dir);  // the folder: spiece.model with T5's options
  EXPECT_FALSE(tokenizer->adds_bos_by_default());
  ASSERT_EQ(tokenizer->appended_eos_id(), std::optional<int64_t>(1));
  ASSERT_EQ(expected["cases"].size(), 61u);
  int checked = 0;
  for (const auto& c : expected["cases"]) {
    const std::string text = c["text"].get<std::string>(), name = c["name"].get<std::string>();
    EXPECT_EQ(tokenizer->encode(text, false), c["ids"].get<Ids>()) << name;
    EXPECT_EQ(with_special(*tokenizer, text), c["ids_with_special"].get<Ids>()) << name;
    EXPECT_EQ(tokenizer->decode(c["ids"].get<Ids>()), c["decode"].get<std::string>()) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 61);
}

TEST(T5Tokenizer, SpieceModelFileChoosesT5OptionsOtherModelFilesDoNot) {
  ROME_REQUIRE_SHARED();
  auto t5 = load_tokenizer(test::shared_path("tokenizers/t5/spiece.model"));
  EXPECT_EQ(t5->appended_eos_id(), std::optional<int64_t>(1));
  EXPECT_EQ(t5->encode("Hello world", true), (Ids{8774, 296}));  // no BOS piece: add_bos adds nothing
  auto llama = load_tokenizer(test::shared_path("models/stories260K/tok512.model"));
  EXPECT_FALSE(llama->appended_eos_id().has_value());
  EXPECT_TRUE(llama->adds_bos_by_default());
}

TEST(T5Tokenizer, ReferenceModelTokenizerGivesTheGoldenInputIds) {
  ROME_REQUIRE_SHARED();
  for (const char* variant : {"v1_0", "v1_1"}) {
    const auto dir = test::shared_path(std::string("reference/t5/") + variant);
    const auto golden = nlohmann::json::parse(read_file(dir / "golden.json"));
    auto tokenizer = load_tokenizer(dir);
    for (const auto& c : golden["cases"])
      for (size_t row = 0; row < c["texts"].size(); ++row) {
        Ids expected;
        for (size_t i = 0; i < c["input_ids"][row].size(); ++i)
          if (c["attention_mask"][row][i].get<int>() == 1) expected.push_back(c["input_ids"][row][i].get<int64_t>());
        EXPECT_EQ(with_special(*tokenizer, c["texts"][row].get<std::string>()), expected) << variant << " " << c["name"];
      }
  }
}

}  // namespace
}  // namespace rc
