// Hugging Face tokenizers against ids produced by Hugging Face's own `tokenizers` library
// (../shared/tokenizers/<family>/expected.json): every case exact, with and without special
// tokens, tokens as strings, and the decode round trip. Then each tokenizer.json component on
// small synthesized files, OPT's convention, and the refusal of unsupported components by name.
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/text/bpe_tokenizer.h"
#include "rome_collapse/text/hf_tokenizer.h"
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
using Strings = std::vector<std::string>;
using test::expect_input_error;

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

json expected_cases(const std::string& family) {
  json expected = json::parse(read_file(test::shared_path("tokenizers/" + family + "/expected.json")));
  return expected["cases"];
}

// Every case of `family`'s expected.json, through the tokenizer load_tokenizer picks for its folder.
void check_family(const std::string& family, const std::string& expected_kind) {
  auto tokenizer = load_tokenizer(test::shared_path("tokenizers/" + family));
  ASSERT_NE(tokenizer->describe().find(expected_kind), std::string::npos) << tokenizer->describe();
  const auto* hf = dynamic_cast<const HfTokenizer*>(tokenizer.get());
  ASSERT_NE(hf, nullptr);
  const json cases = expected_cases(family);
  ASSERT_EQ(cases.size(), 61u);
  size_t exact = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(family + " case " + c["name"].get<std::string>());
    const std::string text = c["text"].get<std::string>();
    const Ids ids = c["ids"].get<Ids>();
    const Ids with_special = c["ids_with_special"].get<Ids>();
    TokenizedText split = hf->tokenize(text, false);
    EXPECT_EQ(hf->encode(text, false), ids);
    EXPECT_EQ(split.ids, ids);
    EXPECT_EQ(split.pieces, c["tokens"].get<Strings>());
    EXPECT_EQ(hf->encode(text, true), with_special);
    EXPECT_EQ(hf->decode(ids, false), c["decode"].get<std::string>());
    EXPECT_EQ(hf->decode(with_special, true), c["decode_with_special_skip_special"].get<std::string>());
    EXPECT_EQ(hf->decode(ids, false) == text, c["decode_roundtrip_exact"].get<bool>());
    // Offsets: inside the text, in order.
    ASSERT_EQ(split.offsets.size(), split.ids.size());
    size_t previous_begin = 0;
    for (const auto& [begin, end] : split.offsets) {
      EXPECT_LE(begin, end);
      EXPECT_LE(end, text.size());
      EXPECT_GE(begin, previous_begin);
      previous_begin = begin;
    }
    if (!::testing::Test::HasFailure()) ++exact;
  }
  EXPECT_EQ(exact, cases.size());
}

TEST(HfTokenizerExpected, GptNeoX) {
  ROME_REQUIRE_SHARED();
  check_family("gptneox", "tokenizer.json");
}

TEST(HfTokenizerExpected, Llama3) {
  ROME_REQUIRE_SHARED();
  check_family("llama3", "tokenizer.json");
}

TEST(HfTokenizerExpected, Qwen2SlowFiles) {
  ROME_REQUIRE_SHARED();
  check_family("qwen2", "vocab.json+merges.txt+tokenizer_config.json");
}

TEST(HfTokenizerExpected, Qwen3) {
  ROME_REQUIRE_SHARED();
  check_family("qwen3", "tokenizer.json");
}

TEST(HfTokenizerExpected, MistralTokenizerJson) {
  ROME_REQUIRE_SHARED();
  check_family("mistral", "tokenizer.json");  // tokenizer.json first, although tokenizer.model is beside it
}

// Mistral's tokenizer.model stays on the SentencePiece library: its own ids where they differ.
TEST(HfTokenizerExpected, MistralSentencePieceModel) {
  ROME_REQUIRE_SHARED();
  SentencePieceTokenizer tokenizer(test::shared_path("tokenizers/mistral/tokenizer.model"));
  size_t differing = 0;
  for (const auto& c : expected_cases("mistral")) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const auto& crosscheck = c["crosscheck_sentencepiece"];
    const bool agrees = crosscheck.value("agree_ids", true);
    const Ids expected = agrees ? c["ids"].get<Ids>() : crosscheck["ids"].get<Ids>();
    differing += agrees ? 0 : 1;
    EXPECT_EQ(tokenizer.encode(c["text"].get<std::string>(), false), expected);
  }
  EXPECT_EQ(differing, 6u);
}

TEST(HfTokenizer, Llama3OffsetsAndSourceFile) {
  ROME_REQUIRE_SHARED();
  auto tokenizer = load_tokenizer(test::shared_path("tokenizers/llama3"));
  TokenizedText split = tokenizer->tokenize("Danielle Darrieux", false);
  ASSERT_EQ(split.pieces, (Strings{"Dani", "elle", "\xC4\xA0" "Dar", "rie", "ux"}));
  EXPECT_EQ(split.offsets, (std::vector<std::pair<size_t, size_t>>{{0, 4}, {4, 8}, {8, 12}, {12, 15}, {15, 17}}));
  EXPECT_EQ(tokenizer->source_files(), std::vector<fs::path>{test::shared_path("tokenizers/llama3") / "tokenizer.json"});
  EXPECT_FALSE(tokenizer->adds_bos_by_default());  // this tokenizer.json's post-processor adds no BOS
  EXPECT_EQ(tokenizer->bos_id(), std::nullopt);
  EXPECT_EQ(tokenizer->eos_id(), std::optional<int64_t>(128001));  // tokenizer_config.json's eos_token
}

TEST(HfTokenizer, MistralAddsBosAndMapsOffsetsThroughMetaspace) {
  ROME_REQUIRE_SHARED();
  auto tokenizer = load_tokenizer(test::shared_path("tokenizers/mistral"));
  EXPECT_TRUE(tokenizer->adds_bos_by_default());
  EXPECT_EQ(tokenizer->bos_id(), std::optional<int64_t>(1));
  EXPECT_EQ(tokenizer->unk_id(), std::optional<int64_t>(0));
  TokenizedText split = tokenizer->tokenize("Hello world", true);
  ASSERT_EQ(split.pieces, (Strings{"<s>", "\xE2\x96\x81Hello", "\xE2\x96\x81world"}));
  EXPECT_EQ(split.offsets, (std::vector<std::pair<size_t, size_t>>{{0, 0}, {0, 5}, {5, 11}}));
}

// ---- synthesized tokenizer.json files, one component at a time --------------------------------------

// A tokenizer.json whose BPE vocabulary holds `words` whole (ignore_merges): each pre-token in
// the vocabulary comes out as one token, so the tokens show the pre-tokenizer's splits.
json whole_word_tokenizer(const Strings& words, json pre_tokenizer, json normalizer = nullptr) {
  json vocab = json::object();
  for (const auto& word : words)
    if (!vocab.contains(word)) vocab[word] = static_cast<int64_t>(vocab.size());
  for (char c = ' '; c <= '~'; ++c)
    if (!vocab.contains(std::string(1, c))) vocab[std::string(1, c)] = static_cast<int64_t>(vocab.size());
  return {{"normalizer", normalizer},
          {"pre_tokenizer", pre_tokenizer},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}, {"ignore_merges", true}}}};
}

Strings pieces_of(const json& document, const std::string& text) {
  return HfTokenizer::from_document(document, "synthetic", {})->tokenize(text, false).pieces;
}

json split_on_dash(const std::string& behavior, bool invert = false) {
  return {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}};
}

// The examples of the crate's SplitDelimiterBehavior documentation, on "the-final--countdown".
TEST(HfTokenizerComponents, SplitBehaviours) {
  const Strings words = {"the", "final", "countdown", "-", "--", "the-", "final-", "-final", "-countdown"};
  const std::string text = "the-final--countdown";
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, split_on_dash("Removed")), text), (Strings{"the", "final", "countdown"}));
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, split_on_dash("Isolated")), text),
            (Strings{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, split_on_dash("MergedWithPrevious")), text),
            (Strings{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, split_on_dash("MergedWithNext")), text),
            (Strings{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, split_on_dash("Contiguous")), text),
            (Strings{"the", "-", "final", "--", "countdown"}));
  // invert: the words are the matches; Removed then keeps the dashes only.
  json inverted = {{"type", "Split"}, {"pattern", {{"Regex", "[a-z]+"}}}, {"behavior", "Removed"}, {"invert", true}};
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, inverted), text), (Strings{"the", "final", "countdown"}));
  inverted["invert"] = false;
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, inverted), text), (Strings{"-", "--"}));
}

TEST(HfTokenizerComponents, DigitsAndSequence) {
  const Strings words = {"abc", "123", "1", "2", "3", "x"};
  json individual = {{"type", "Digits"}, {"individual_digits", true}};
  json grouped = {{"type", "Digits"}, {"individual_digits", false}};
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, individual), "abc123x"), (Strings{"abc", "1", "2", "3", "x"}));
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, grouped), "abc123x"), (Strings{"abc", "123", "x"}));
  json sequence = {{"type", "Sequence"}, {"pretokenizers", json::array({split_on_dash("Removed"), individual})}};
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, sequence), "abc-12"), (Strings{"abc", "1", "2"}));
}

TEST(HfTokenizerComponents, MetaspaceSplitAndPrependSchemes) {
  const std::string meta = "\xE2\x96\x81";
  const Strings words = {meta + "a", meta + "b", "a", "b", meta, meta + "a" + meta + "b"};
  json metaspace = {{"type", "Metaspace"}, {"replacement", meta}, {"prepend_scheme", "always"}, {"split", true}};
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, metaspace), "a b"), (Strings{meta + "a", meta + "b"}));
  metaspace["split"] = false;
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, metaspace), "a b"), (Strings{meta + "a" + meta + "b"}));
  metaspace["split"] = true;
  metaspace["prepend_scheme"] = "never";
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, metaspace), "a b"), (Strings{"a", meta + "b"}));
  // Older files: add_prefix_space instead of prepend_scheme.
  json legacy = {{"type", "Metaspace"}, {"replacement", meta}, {"add_prefix_space", true}};
  EXPECT_EQ(pieces_of(whole_word_tokenizer(words, legacy), "b"), (Strings{meta + "b"}));
}

// Llama-2-era tokenizer.json: no pre-tokenizer, normalizer Prepend("▁") + Replace(" ", "▁").
TEST(HfTokenizerComponents, PrependAndReplaceNormalizersKeepOffsets) {
  const std::string meta = "\xE2\x96\x81";
  json normalizer = {{"type", "Sequence"},
                     {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", meta}},
                                                  {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", meta}}})}};
  json document = whole_word_tokenizer({meta + "hi" + meta + "you"}, nullptr, normalizer);
  auto tokenizer = HfTokenizer::from_document(document, "synthetic", {});
  TokenizedText split = tokenizer->tokenize("hi you", false);
  EXPECT_EQ(split.pieces, (Strings{meta + "hi" + meta + "you"}));
  EXPECT_EQ(split.offsets, (std::vector<std::pair<size_t, size_t>>{{0, 6}}));
}

TEST(HfTokenizerComponents, NfcNormalizerComposesAndMapsOffsetsToTheInput) {
  json document = whole_word_tokenizer({"caf\xC3\xA9"}, {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Removed"}},
                                       {{"type", "NFC"}});
  auto tokenizer = HfTokenizer::from_document(document, "synthetic", {});
  TokenizedText split = tokenizer->tokenize("cafe\xCC\x81 cafe\xCC\x81", false);  // e + combining acute
  EXPECT_EQ(split.pieces, (Strings{"caf\xC3\xA9", "caf\xC3\xA9"}));
  EXPECT_EQ(split.offsets, (std::vector<std::pair<size_t, size_t>>{{0, 6}, {7, 13}}));
}

// BPE: byte_fallback, unk_token with fuse_unk, merges as pairs, continuing_subword_prefix.
TEST(HfTokenizerComponents, BpeByteFallbackUnkAndPrefix) {
  json vocab = {{"<unk>", 0}, {"a", 1}, {"b", 2}, {"ab", 3}, {"<0xC3>", 4}, {"<0xA9>", 5}};
  json document = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({json::array({"a", "b"})})},
                              {"unk_token", "<unk>"}, {"byte_fallback", true}, {"fuse_unk", true}}},
                   {"decoder", {{"type", "Sequence"}, {"decoders", json::array({{{"type", "ByteFallback"}}, {{"type", "Fuse"}}})}}}};
  auto tokenizer = HfTokenizer::from_document(document, "synthetic", {});
  EXPECT_EQ(tokenizer->encode("ab\xC3\xA9" "a", false), (Ids{3, 4, 5, 1}));
  EXPECT_EQ(tokenizer->decode({3, 4, 5, 1}, false), "ab\xC3\xA9" "a");
  EXPECT_EQ(tokenizer->decode({4, 1}, false), "\xEF\xBF\xBD" "a");  // a lone byte decodes as U+FFFD
  document["model"]["byte_fallback"] = false;  // now unknown characters are <unk>, fused
  tokenizer = HfTokenizer::from_document(document, "synthetic", {});
  EXPECT_EQ(tokenizer->encode("axyb", false), (Ids{1, 0, 2}));
  document["model"]["fuse_unk"] = false;
  tokenizer = HfTokenizer::from_document(document, "synthetic", {});
  EXPECT_EQ(tokenizer->encode("axyb", false), (Ids{1, 0, 0, 2}));

  json prefixed = {{"a", 0}, {"##b", 1}, {"ab", 2}};
  json with_prefix = {{"model", {{"type", "BPE"}, {"vocab", prefixed}, {"merges", json::array({"a ##b"})},
                                 {"continuing_subword_prefix", "##"}}}};
  EXPECT_EQ(HfTokenizer::from_document(with_prefix, "synthetic", {})->encode("ab", false), (Ids{2}));
}

// Added tokens: matched before the model, longest first, with lstrip / rstrip / single_word.
TEST(HfTokenizerComponents, AddedTokenFlags) {
  json document = whole_word_tokenizer({"x", "y"}, {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Removed"}});
  document["added_tokens"] = json::array({
      {{"id", 100}, {"content", "<m>"}, {"special", true}, {"lstrip", true}, {"rstrip", true}},
      {{"id", 101}, {"content", "<mm>"}, {"special", true}},
      {{"id", 102}, {"content", "cat"}, {"special", false}, {"single_word", true}, {"normalized", false}},
  });
  auto tokenizer = HfTokenizer::from_document(document, "synthetic", {});
  TokenizedText split = tokenizer->tokenize("x  <m>  y<mm>", false);
  const int64_t x = tokenizer->encode("x", false).at(0), y = tokenizer->encode("y", false).at(0);
  EXPECT_EQ(split.ids, (Ids{x, 100, y, 101}));
  EXPECT_EQ(split.pieces[1], "  <m>  ");  // the stripped spaces belong to the token
  EXPECT_EQ(split.offsets[1], (std::pair<size_t, size_t>{1, 8}));
  EXPECT_EQ(tokenizer->encode("x cat y", false).at(1), 102);
  EXPECT_EQ(tokenizer->encode("concatenate", false).size(), 11u);  // not a single word: plain characters
  EXPECT_EQ(tokenizer->decode({100, 102}, true), "cat");           // specials skipped
}

// ---- slow-tokenizer folders -------------------------------------------------------------------

// OPT: GPT-2's BPE with its own ids (fairseq's dictionary order) and "</s>" prepended as BOS.
TEST(HfTokenizer, OptFolderPrependsEndOfSequenceAsBos) {
  ROME_REQUIRE_SHARED();
  json gpt2_vocab = json::parse(read_file(test::shared_path("tokenizers/gpt2/vocab.json")));
  json vocab = {{"<s>", 0}, {"<pad>", 1}, {"</s>", 2}, {"<unk>", 3}};
  for (const auto& [token, id] : gpt2_vocab.items()) vocab[token] = id.get<int64_t>() + 4;
  auto dir = test::scratch_dir("opt-tokenizer");
  write_text(dir / "vocab.json", vocab.dump());
  fs::copy_file(test::shared_path("tokenizers/gpt2/merges.txt"), dir / "merges.txt", fs::copy_options::overwrite_existing);
  write_text(dir / "tokenizer_config.json",
             R"({"add_bos_token": true, "bos_token": {"content": "</s>", "__type": "AddedToken"}, "eos_token": "</s>",
                 "unk_token": "</s>", "pad_token": "<pad>", "add_prefix_space": false, "errors": "replace"})");
  auto tokenizer = load_tokenizer(dir);
  EXPECT_TRUE(tokenizer->adds_bos_by_default());
  EXPECT_EQ(tokenizer->bos_id(), std::optional<int64_t>(2));
  EXPECT_EQ(tokenizer->eos_id(), std::optional<int64_t>(2));
  EXPECT_EQ(tokenizer->encode("Hello world", true), (Ids{2, 15496 + 4, 995 + 4}));
  EXPECT_EQ(tokenizer->encode("Hello world", false), (Ids{15496 + 4, 995 + 4}));
  EXPECT_EQ(tokenizer->encode("a</s>", false), (Ids{64 + 4, 2}));  // special tokens split out
  EXPECT_EQ(tokenizer->decode({2, 15496 + 4, 995 + 4}), "Hello world");
  EXPECT_EQ(tokenizer->source_files().size(), 3u);
}

TEST(HfTokenizer, Gpt2FolderWithoutConfigMatchesBpeTokenizer) {
  ROME_REQUIRE_SHARED();
  auto tokenizer = load_tokenizer(test::shared_path("tokenizers/gpt2"));
  EXPECT_NE(tokenizer->describe().find("hf-bpe"), std::string::npos);
  EXPECT_FALSE(tokenizer->adds_bos_by_default());
  EXPECT_EQ(tokenizer->bos_id(), std::nullopt);  // GPT-2 adds nothing around the text
  EXPECT_EQ(tokenizer->eos_id(), std::optional<int64_t>(50256));
  // Without tokenizer_config.json, special-token text is plain text, as in OpenAI's encoder.py.
  auto reference = BpeTokenizer::from_vocab_and_merges(test::shared_path("tokenizers/gpt2/vocab.json"),
                                                       test::shared_path("tokenizers/gpt2/merges.txt"));
  for (const std::string text : {"Hello<|endoftext|>", "The mother tongue of Danielle Darrieux is", " caf\xC3\xA9  \n\n 2024!?"})
    EXPECT_EQ(tokenizer->encode(text, false), reference->encode(text, false)) << text;
}

// ---- refusals ---------------------------------------------------------------------------------

TEST(HfTokenizer, UnsupportedComponentsAreRefusedByName) {
  auto dir = test::scratch_dir("unsupported-components");
  json base = whole_word_tokenizer({"x"}, nullptr);
  auto refused = [&](const std::string& name, const std::function<void(json&)>& change, const Strings& needles) {
    json document = base;
    change(document);
    auto path = dir / (name + ".json");
    write_text(path, document.dump());
    Strings all = needles;
    all.push_back(path.string());
    expect_input_error([&] { HfTokenizer::from_tokenizer_json(path); }, all);
    expect_input_error([&] { load_tokenizer(path); }, all);
  };
  refused("wordpiece", [](json& d) { d["model"]["type"] = "WordPiece"; }, {"model", "'WordPiece'"});
  refused("unigram", [](json& d) { d["model"] = {{"type", "Unigram"}, {"vocab", json::array()}}; }, {"model", "'Unigram'"});
  refused("wordlevel", [](json& d) { d["model"]["type"] = "WordLevel"; }, {"model", "'WordLevel'"});
  refused("bert-normalizer", [](json& d) { d["normalizer"] = {{"type", "BertNormalizer"}}; }, {"normalizer", "'BertNormalizer'"});
  refused("precompiled", [](json& d) { d["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "Precompiled"}}})}}; },
          {"normalizer", "'Precompiled'"});
  refused("whitespace", [](json& d) { d["pre_tokenizer"] = {{"type", "Whitespace"}}; }, {"pre_tokenizer", "'Whitespace'"});
  refused("after-byte-level", [](json& d) {
    d["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", json::array({{{"type", "ByteLevel"}}, {{"type", "Digits"}}})}};
  }, {"pre_tokenizer", "'Digits'", "ByteLevel"});
  refused("roberta", [](json& d) { d["post_processor"] = {{"type", "RobertaProcessing"}}; }, {"post_processor", "'RobertaProcessing'"});
  refused("wordpiece-decoder", [](json& d) { d["decoder"] = {{"type", "WordPiece"}}; }, {"decoder", "'WordPiece'"});
  refused("bad-regex", [](json& d) {
    d["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  }, {"(unclosed", "does not compile"});
  refused("dropout", [](json& d) { d["model"]["dropout"] = 0.1; }, {"dropout"});
}

TEST(HfTokenizer, RefusedTokenizerJsonGivesWayToTokenizerModel) {
  ROME_REQUIRE_SHARED();
  auto dir = test::scratch_dir("refused-json-with-model");
  json document = whole_word_tokenizer({"x"}, nullptr);
  document["model"]["type"] = "Unigram";
  write_text(dir / "tokenizer.json", document.dump());
  fs::copy_file(test::shared_path("models/stories260K/tok512.model"), dir / "tokenizer.model",
                fs::copy_options::overwrite_existing);
  auto tokenizer = load_tokenizer(dir);
  EXPECT_NE(tokenizer->describe().find("sentencepiece"), std::string::npos);
  fs::remove(dir / "tokenizer.model");
  expect_input_error([&] { load_tokenizer(dir); }, {(dir / "tokenizer.json").string(), "'Unigram'"});
}

}  // namespace
}  // namespace rc
