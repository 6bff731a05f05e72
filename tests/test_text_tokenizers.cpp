// Tokenizers: GPT-2 BPE ids against golden values, round trips, tokenizer.json loading,
// SentencePiece, and load_tokenizer's choice of files and its error messages.
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/text/bpe_tokenizer.h"
#include "rome_collapse/text/sentencepiece_tokenizer.h"
#include "rome_collapse/text/tokenizer.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace rc {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int64_t>;

fs::path gpt2_dir() { return test::shared_path("tokenizers/gpt2"); }

std::unique_ptr<Tokenizer> load_gpt2() {
  return BpeTokenizer::from_vocab_and_merges(gpt2_dir() / "vocab.json", gpt2_dir() / "merges.txt");
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

using test::expect_input_error;

const std::vector<std::string> kRoundTripTexts = {
    "Hello world",
    " leading space and trailing space ",
    "café naïve — 日本語 🙂",
    "numbers 12345 3.14 -0.5e10",
    "whitespace   runs\t\ttabs\n\n\nnewlines  \n  ",
    "contractions: we'll they're I'm it's you've she'd WE'LL",
    "I'm here  \n\nok",
    "a<|endoftext|>b",  // special-token text is ordinary text for GPT-2's encoder
    "punctuation!!! ... ??? (brackets) [x] {y} \"quotes\" 'single'",
    "",
    "\xff\xfe bytes that are not UTF-8 \xc3",
};

TEST(Gpt2Bpe, MatchesGoldenIds) {
  ROME_REQUIRE_SHARED();
  auto tokenizer = load_gpt2();
  json golden = json::parse(read_file(test::shared_path("reference/golden_reference.json")));
  int checked = 0;
  for (const char* model : {"gpt2", "llama", "gptj"}) {
    ASSERT_TRUE(golden.contains(model)) << model;
    for (const auto& prompt : golden[model]["prompts"]) {
      auto text = prompt["text"].get<std::string>();
      EXPECT_EQ(tokenizer->encode(text, false), prompt["ids"].get<Ids>()) << model << ": " << text;
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(Gpt2Bpe, MatchesKnownEncodings) {
  ROME_REQUIRE_SHARED();
  auto tokenizer = load_gpt2();
  EXPECT_EQ(tokenizer->encode("Hello world", false), (Ids{15496, 995}));
  EXPECT_EQ(tokenizer->encode(" Hello world", false), (Ids{18435, 995}));
  EXPECT_EQ(tokenizer->encode("The mother tongue of Danielle Darrieux is", false),
            (Ids{464, 2802, 11880, 286, 39808, 7491, 5034, 2821, 318}));
  // Twice: the second encode is served from the word cache and must agree.
  EXPECT_EQ(tokenizer->encode("Hello world", false), (Ids{15496, 995}));
}

TEST(Gpt2Bpe, ConventionsAndSpecialIds) {
  ROME_REQUIRE_SHARED();
  auto tokenizer = load_gpt2();
  EXPECT_FALSE(tokenizer->adds_bos_by_default());
  EXPECT_EQ(tokenizer->bos_id(), std::optional<int64_t>(50256));
  EXPECT_EQ(tokenizer->eos_id(), std::optional<int64_t>(50256));
  EXPECT_EQ(tokenizer->vocab_size(), 50257);
  EXPECT_EQ(tokenizer->encode_default("Hello world"), (Ids{15496, 995}));
  EXPECT_EQ(tokenizer->encode("Hello world", true), (Ids{50256, 15496, 995}));
  EXPECT_EQ(tokenizer->decode({50256, 15496, 995, 50256}), "Hello world");
  EXPECT_THROW(tokenizer->decode({50257}), std::out_of_range);
  EXPECT_THROW(tokenizer->decode({-1}), std::out_of_range);
}

TEST(Gpt2Bpe, RoundTrips) {
  ROME_REQUIRE_SHARED();
  auto tokenizer = load_gpt2();
  for (const auto& text : kRoundTripTexts) EXPECT_EQ(tokenizer->decode(tokenizer->encode(text, false)), text);
}

TEST(Gpt2Bpe, MePplSentencesRoundTrip) {
  ROME_REQUIRE_SHARED();
  auto tokenizer = load_gpt2();
  json sentences = json::parse(read_file(test::shared_path("data/me-ppl/ME-PPL_50.json")));
  ASSERT_TRUE(sentences.is_array());
  ASSERT_FALSE(sentences.empty());
  for (const auto& entry : sentences) {
    auto text = entry["Text"].get<std::string>();
    Ids ids = tokenizer->encode(text, false);
    EXPECT_FALSE(ids.empty()) << text;
    EXPECT_EQ(tokenizer->decode(ids), text) << entry["Corpus"];
  }
}

// Writes tokenizer.json files in the Hugging Face layout from the GPT-2 vocab.json/merges.txt.
json gpt2_tokenizer_json(bool merges_as_pairs) {
  json vocab = json::parse(read_file(gpt2_dir() / "vocab.json"));
  std::string merges_text = read_file(gpt2_dir() / "merges.txt");
  json merges = json::array();
  size_t start = 0;
  while (start < merges_text.size()) {
    size_t end = merges_text.find('\n', start);
    if (end == std::string::npos) end = merges_text.size();
    std::string line = merges_text.substr(start, end - start);
    start = end + 1;
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    size_t space = line.find(' ');
    if (merges_as_pairs)
      merges.push_back(json::array({line.substr(0, space), line.substr(space + 1)}));
    else
      merges.push_back(line);
  }
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  return {
      {"version", "1.0"},
      {"added_tokens", json::array({{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}})},
      {"pre_tokenizer", byte_level},
      {"decoder", byte_level},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"vocab", vocab}, {"merges", merges}}},
  };
}

TEST(Gpt2Bpe, TokenizerJsonMatchesVocabAndMerges) {
  ROME_REQUIRE_SHARED();
  auto reference = load_gpt2();
  auto dir = test::scratch_dir("tokenizer-json");
  const std::vector<std::string> sentences = {"The mother tongue of Danielle Darrieux is",
                                              "café naïve — 日本語 🙂 12345 3.14",
                                              "I'm here  \n\nok, we'll see what they're doing"};
  for (bool as_pairs : {false, true}) {
    SCOPED_TRACE(as_pairs ? "merges as [a, b] pairs" : "merges as \"a b\" strings");
    auto path = dir / (as_pairs ? "pairs" : "strings") / "tokenizer.json";
    fs::create_directories(path.parent_path());
    write_text(path, gpt2_tokenizer_json(as_pairs).dump());
    auto loaded = load_tokenizer(path.parent_path());  // a directory with only tokenizer.json
    EXPECT_EQ(loaded->vocab_size(), reference->vocab_size());
    EXPECT_EQ(loaded->eos_id(), reference->eos_id());
    EXPECT_EQ(loaded->bos_id(), std::nullopt);  // no post-processor: Hugging Face adds nothing around the text
    for (const auto& text : sentences) {
      EXPECT_EQ(loaded->encode(text, false), reference->encode(text, false)) << text;
      EXPECT_EQ(loaded->decode(loaded->encode(text, true)), text);
    }
  }
}

TEST(SentencePiece, Tok512EncodesAndRoundTrips) {
  ROME_REQUIRE_SHARED();
  auto model_path = test::shared_path("models/stories260K/tok512.model");
  SentencePieceTokenizer tokenizer(model_path);
  EXPECT_TRUE(tokenizer.adds_bos_by_default());
  EXPECT_EQ(tokenizer.bos_id(), std::optional<int64_t>(1));
  EXPECT_EQ(tokenizer.eos_id(), std::optional<int64_t>(2));
  EXPECT_EQ(tokenizer.vocab_size(), 512);

  Ids ids = tokenizer.encode("Once upon a time", true);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(tokenizer.encode_default("Once upon a time"), ids);
  EXPECT_EQ(Ids(ids.begin() + 1, ids.end()), tokenizer.encode("Once upon a time", false));

  for (const std::string text : {"Once upon a time, there was a little girl named Lily.",
                                 "She loved to play outside in the sun. One day, she saw a big dog!",
                                 "\"Can I play with you?\" asked Tom. The dog wagged its tail."}) {
    Ids encoded = tokenizer.encode(text, true);
    EXPECT_EQ(tokenizer.decode(encoded), text);
    encoded.push_back(*tokenizer.eos_id());  // EOS is dropped by decode too
    EXPECT_EQ(tokenizer.decode(encoded), text);
  }
  EXPECT_THROW(tokenizer.decode({512}), std::out_of_range);

  auto via_factory = load_tokenizer(model_path);
  EXPECT_EQ(via_factory->encode("Once upon a time", true), ids);
  EXPECT_TRUE(via_factory->adds_bos_by_default());
}

TEST(LoadTokenizer, FindsGpt2Directory) {
  ROME_REQUIRE_SHARED();
  auto tokenizer = load_tokenizer(gpt2_dir());
  EXPECT_EQ(tokenizer->encode("Hello world", false), (Ids{15496, 995}));
  EXPECT_FALSE(tokenizer->adds_bos_by_default());
  auto from_vocab_file = load_tokenizer(gpt2_dir() / "vocab.json");  // merges.txt found beside it
  EXPECT_EQ(from_vocab_file->encode(" Hello world", false), (Ids{18435, 995}));
}

TEST(LoadTokenizer, UnreadableTokenizerJsonGivesWayToTokenizerModel) {
  ROME_REQUIRE_SHARED();
  // tokenizer.json comes first (as in Hugging Face); one that is refused (here: an empty vocabulary)
  // gives way to the tokenizer.model beside it, with a warning.
  auto dir = test::scratch_dir("llama-style-dir");
  write_text(dir / "tokenizer.json",
             R"({"model": {"type": "BPE", "byte_fallback": true, "vocab": {}, "merges": []},
                 "pre_tokenizer": {"type": "Metaspace"}, "decoder": {"type": "ByteFallback"}})");
  fs::copy_file(test::shared_path("models/stories260K/tok512.model"), dir / "tokenizer.model");
  auto tokenizer = load_tokenizer(dir);
  EXPECT_TRUE(tokenizer->adds_bos_by_default());
  EXPECT_EQ(tokenizer->vocab_size(), 512);
  // Alone, the same tokenizer.json is refused with its reason.
  fs::remove(dir / "tokenizer.model");
  expect_input_error([&] { load_tokenizer(dir); }, {(dir / "tokenizer.json").string(), "model.vocab is empty"});
}

TEST(LoadTokenizer, EmptyOrMissingPathIsInputError) {
  auto dir = test::scratch_dir("empty-tokenizer-dir");
  expect_input_error([&] { load_tokenizer(dir); }, {dir.string(), "no tokenizer found"});
  expect_input_error([&] { load_tokenizer(dir / "absent"); }, {(dir / "absent").string()});
  write_text(dir / "notes.txt", "hello");
  expect_input_error([&] { load_tokenizer(dir / "notes.txt"); }, {(dir / "notes.txt").string()});
}

TEST(LoadTokenizer, BadGpt2FilesNameTheFile) {
  ROME_REQUIRE_SHARED();
  const std::string vocab_text = read_file(gpt2_dir() / "vocab.json");
  const std::string merges_text = read_file(gpt2_dir() / "merges.txt");

  auto malformed_merges = test::scratch_dir("malformed-merges");
  write_text(malformed_merges / "vocab.json", vocab_text);
  write_text(malformed_merges / "merges.txt", "#version: 0.2\n\u0120 t\nthis line has three\n");
  expect_input_error([&] { load_tokenizer(malformed_merges); },
                     {(malformed_merges / "merges.txt").string(), "line 3"});

  auto unknown_merge = test::scratch_dir("unknown-merge");
  write_text(unknown_merge / "vocab.json", vocab_text);
  write_text(unknown_merge / "merges.txt", "#version: 0.2\nnot_a_token x\n");
  expect_input_error([&] { load_tokenizer(unknown_merge); }, {(unknown_merge / "merges.txt").string()});

  auto bad_vocab = test::scratch_dir("bad-vocab");
  write_text(bad_vocab / "vocab.json", "{ this is not json");
  write_text(bad_vocab / "merges.txt", merges_text);
  expect_input_error([&] { load_tokenizer(bad_vocab); }, {(bad_vocab / "vocab.json").string(), "JSON"});

  auto missing_merges = test::scratch_dir("missing-merges");
  write_text(missing_merges / "vocab.json", vocab_text);
  expect_input_error([&] { load_tokenizer(missing_merges); }, {(missing_merges / "merges.txt").string()});
  expect_input_error([&] { load_tokenizer(missing_merges / "vocab.json"); },
                     {(missing_merges / "merges.txt").string()});
  expect_input_error([&] { BpeTokenizer::from_vocab_and_merges(missing_merges / "vocab.json",
                                                               missing_merges / "merges.txt"); },
                     {(missing_merges / "merges.txt").string()});
}

TEST(LoadTokenizer, GarbageSentencePieceModelNamesTheFile) {
  auto dir = test::scratch_dir("garbage-model");
  write_text(dir / "garbage.model", "\x01\x02 definitely not a protobuf \xff\xff\xff");
  expect_input_error([&] { load_tokenizer(dir / "garbage.model"); }, {(dir / "garbage.model").string()});
  write_text(dir / "tokenizer.model", "");
  expect_input_error([&] { load_tokenizer(dir); }, {(dir / "tokenizer.model").string()});
}

}  // namespace
}  // namespace rc
