// llama2.c tokenizer (.bin): run.c's encode/decode rules on small hand-made vocabularies, agreement
// with SentencePiece on the same tok512 vocabulary, load_tokenizer's handling of .bin files, unk_id
// across the tokenizer families, and errors for truncated or foreign .bin files.
#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "rome_collapse/text/bpe_tokenizer.h"
#include "rome_collapse/text/llama2c_tokenizer.h"
#include "rome_collapse/text/sentencepiece_tokenizer.h"
#include "rome_collapse/text/tokenizer.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace rc {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<int64_t>;

struct Piece {
  float score = 0;
  std::string text;
};

// llama2.c's layout: int32 max_token_length, then (float32 score, int32 length, bytes) per token.
std::string serialize(const std::vector<Piece>& pieces) {
  int32_t max_length = 1;
  for (const auto& piece : pieces) max_length = std::max<int32_t>(max_length, static_cast<int32_t>(piece.text.size()));
  std::string bytes(reinterpret_cast<const char*>(&max_length), 4);
  for (const auto& piece : pieces) {
    const auto length = static_cast<int32_t>(piece.text.size());
    bytes.append(reinterpret_cast<const char*>(&piece.score), 4);
    bytes.append(reinterpret_cast<const char*>(&length), 4);
    bytes += piece.text;
  }
  return bytes;
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// What llama2.c's export writes first: <unk>, BOS, EOS and the 256 byte pieces, then `extra`.
std::vector<Piece> llama2c_vocabulary(const std::vector<Piece>& extra) {
  std::vector<Piece> pieces = {{0, "<unk>"}, {0, "\n<s>\n"}, {0, "\n</s>\n"}};
  static const char* const kHex = "0123456789ABCDEF";
  for (int byte = 0; byte < 256; ++byte) pieces.push_back({0, std::string("<0x") + kHex[byte >> 4] + kHex[byte & 0xF] + ">"});
  pieces.insert(pieces.end(), extra.begin(), extra.end());
  return pieces;
}

// Parses a .bin independently of the class under test.
std::vector<Piece> read_pieces(const fs::path& path) {
  const std::string bytes = read_file(path);
  std::vector<Piece> pieces;
  size_t offset = 4;
  while (offset < bytes.size()) {
    Piece piece;
    int32_t length = 0;
    std::memcpy(&piece.score, bytes.data() + offset, 4);
    std::memcpy(&length, bytes.data() + offset + 4, 4);
    piece.text = bytes.substr(offset + 8, static_cast<size_t>(length));
    offset += 8 + static_cast<size_t>(length);
    pieces.push_back(std::move(piece));
  }
  return pieces;
}

// run.c's encode() transcribed literally (rescan every pair after each merge), as the reference
// for the tokenizer's faster merge loop.
Ids run_c_encode(const std::vector<Piece>& pieces, const std::string& text, bool bos) {
  std::unordered_map<std::string, int64_t> lookup;
  for (size_t id = 0; id < pieces.size(); ++id) lookup.emplace(pieces[id].text, static_cast<int64_t>(id));
  auto find = [&](const std::string& s) -> int64_t {
    auto it = lookup.find(s);
    return it == lookup.end() ? -1 : it->second;
  };
  Ids tokens;
  if (bos) tokens.push_back(1);
  if (!text.empty()) tokens.push_back(find(" "));
  std::string buffer;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((text[i] & 0xC0) != 0x80) buffer.clear();
    buffer += text[i];
    if (i + 1 < text.size() && (text[i + 1] & 0xC0) == 0x80 && buffer.size() < 4) continue;
    int64_t id = find(buffer);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (unsigned char c : buffer) tokens.push_back(c + 3);
    }
    buffer.clear();
  }
  while (true) {
    float best_score = -1e10f;
    int64_t best_id = -1, best_index = -1;
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      int64_t id = find(pieces[tokens[i]].text + pieces[tokens[i + 1]].text);
      if (id != -1 && pieces[id].score > best_score) {
        best_score = pieces[id].score;
        best_id = id;
        best_index = static_cast<int64_t>(i);
      }
    }
    if (best_index == -1) break;
    tokens[best_index] = best_id;
    tokens.erase(tokens.begin() + best_index + 1);
  }
  return tokens;
}

// SentencePiece's default normalizer (remove_extra_whitespaces, which tok512.model uses) drops
// leading/trailing spaces and collapses runs of them; run.c keeps every space. On text already in
// that form the two agree.
std::string collapse_spaces(const std::string& text) {
  std::string collapsed;
  bool pending_space = false;
  for (char c : text) {
    if (c == ' ') {
      pending_space = true;
      continue;
    }
    if (pending_space && !collapsed.empty()) collapsed += ' ';
    pending_space = false;
    collapsed += c;
  }
  return collapsed;
}

// First `count` non-empty lines of the TinyStories validation text, cut at about 200 bytes
// (on a UTF-8 boundary, so both tokenizers see valid text), spaces collapsed.
std::vector<std::string> tinystories_lines(size_t count, size_t max_bytes = 200) {
  const std::string corpus = read_file(test::shared_path("data/corpus/tinystories_val.txt"));
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < corpus.size() && lines.size() < count) {
    size_t end = corpus.find('\n', start);
    if (end == std::string::npos) end = corpus.size();
    std::string line = corpus.substr(start, end - start);
    start = end + 1;
    if (line.empty()) continue;
    if (line.size() > max_bytes) {
      size_t cut = max_bytes;
      while (cut > 0 && (line[cut] & 0xC0) == 0x80) --cut;
      line.resize(cut);
    }
    lines.push_back(collapse_spaces(line));
  }
  return lines;
}

// Texts that exercise the dummy prefix, byte fallback, tabs and newlines.
const std::vector<std::string> kTrickyTexts = {
    "Once upon a time",
    "tab\tand\nnewline\n",
    "caf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82",
    "Lily said, \"Let's play!\" 123 + 4.5 = ?",
    "a",
};
// Texts SentencePiece's normalizer changes (extra spaces); run.c keeps them.
const std::vector<std::string> kExtraSpaceTexts = {" leading space", "trailing space ", "double  space", " "};

using test::expect_input_error;

// --- hand-made vocabularies (no shared data needed) ---

// ids: 259 " ", 260 "a", 261 "aa", 262 "b", 263 "bb" (score at run.c's -1e10 floor), 264 " b".
fs::path write_small_vocabulary(const std::string& name) {
  auto path = test::scratch_dir(name) / "tok.bin";
  write_bytes(path, serialize(llama2c_vocabulary(
                        {{-10, " "}, {-10, "a"}, {-1, "aa"}, {-10, "b"}, {-1e10f, "bb"}, {-5, " b"}})));
  return path;
}

TEST(Llama2cTokenizer, ConventionsOfASmallVocabulary) {
  Llama2cTokenizer tokenizer(write_small_vocabulary("llama2c-conventions"));
  EXPECT_EQ(tokenizer.vocab_size(), 265);
  EXPECT_TRUE(tokenizer.adds_bos_by_default());
  EXPECT_EQ(tokenizer.bos_id(), std::optional<int64_t>(1));
  EXPECT_EQ(tokenizer.eos_id(), std::optional<int64_t>(2));
  EXPECT_EQ(tokenizer.unk_id(), std::optional<int64_t>(0));
  EXPECT_EQ(tokenizer.piece(259), " ");
  EXPECT_NE(tokenizer.describe().find("tok.bin"), std::string::npos);
  EXPECT_THROW(tokenizer.piece(265), std::out_of_range);
}

TEST(Llama2cTokenizer, EncodeFollowsRunC) {
  Llama2cTokenizer tokenizer(write_small_vocabulary("llama2c-encode"));
  EXPECT_EQ(tokenizer.encode("", false), Ids{});
  EXPECT_EQ(tokenizer.encode("", true), Ids{1});  // no dummy prefix for empty text
  // "aa" merges at the first of two equally scored places.
  EXPECT_EQ(tokenizer.encode("aaa", false), (Ids{259, 261, 260}));
  EXPECT_EQ(tokenizer.encode("aaa", true), (Ids{1, 259, 261, 260}));
  // The dummy prefix " " merges into " b"; "bb" scores -1e10, which run.c never merges.
  EXPECT_EQ(tokenizer.encode("bb", false), (Ids{264, 262}));
  // Code points that are no piece fall back to their bytes (id = byte + 3).
  EXPECT_EQ(tokenizer.encode("\xc3\xa9", false), (Ids{259, 0xC3 + 3, 0xA9 + 3}));
  EXPECT_EQ(tokenizer.encode_default("a"), (Ids{1, 259, 260}));
}

TEST(Llama2cTokenizer, DecodeFollowsRunC) {
  Llama2cTokenizer tokenizer(write_small_vocabulary("llama2c-decode"));
  // A piece right after BOS loses its leading space; BOS and EOS themselves are dropped.
  EXPECT_EQ(tokenizer.decode({1, 264, 262, 2}), "bb");
  EXPECT_EQ(tokenizer.decode({1, 259, 261, 260}), "aaa");
  // Without BOS the dummy-prefix space stays, as in run.c.
  EXPECT_EQ(tokenizer.decode({264, 262}), " bb");
  // Byte pieces become raw bytes, even right after BOS.
  EXPECT_EQ(tokenizer.decode({1, 0x20 + 3, 0xC3 + 3, 0xA9 + 3}), " \xc3\xa9");
  EXPECT_EQ(tokenizer.decode({0}), "<unk>");
  EXPECT_THROW(tokenizer.decode({265}), std::out_of_range);
  EXPECT_THROW(tokenizer.decode({-1}), std::out_of_range);
  for (const auto& texts : {kTrickyTexts, kExtraSpaceTexts})
    for (const auto& text : texts) EXPECT_EQ(tokenizer.decode(tokenizer.encode(text, true)), text);
}

TEST(Llama2cTokenizer, TruncatedFileIsInputErrorNamingIt) {
  auto dir = test::scratch_dir("llama2c-truncated");
  const std::string whole = serialize(llama2c_vocabulary({{-1, " "}, {-2, "hello"}}));
  // Cut inside the last piece's bytes ("hello"), inside its length field, and inside the header.
  for (size_t kept : {whole.size() - 2, whole.size() - 6, size_t{3}}) {
    auto path = dir / ("first" + std::to_string(kept) + "bytes.bin");
    write_bytes(path, whole.substr(0, kept));
    SCOPED_TRACE(path.string());
    expect_input_error([&] { Llama2cTokenizer tokenizer(path); }, {path.string(), "truncated"});
    expect_input_error([&] { load_tokenizer(path); }, {path.string(), "truncated"});
  }
  expect_input_error([&] { load_tokenizer(dir / "absent.bin"); }, {(dir / "absent.bin").string()});
}

TEST(Llama2cTokenizer, ForeignBinFilesAreRefused) {
  auto dir = test::scratch_dir("llama2c-foreign");
  // Well-formed records, but no byte pieces where llama2.c puts them.
  auto no_bytes = dir / "tokenizer.bin";
  write_bytes(no_bytes, serialize({{0, "<unk>"}, {0, "<s>"}, {0, "</s>"}, {-1, "a"}}));
  expect_input_error([&] { load_tokenizer(no_bytes); }, {no_bytes.string(), "259"});
  expect_input_error([&] { load_tokenizer(dir); }, {no_bytes.string()});
  // A record longer than the header's max_token_length.
  std::string too_long = serialize(llama2c_vocabulary({{-1, "abc"}}));
  const int32_t smaller_max = 2;
  std::memcpy(&too_long[0], &smaller_max, 4);
  auto too_long_path = dir / "too_long.bin";
  write_bytes(too_long_path, too_long);
  expect_input_error([&] { load_tokenizer(too_long_path); }, {too_long_path.string(), "max_token_length"});
}

TEST(LoadTokenizer, Llama2cFilesInADirectory) {
  auto dir = test::scratch_dir("llama2c-dir");
  write_bytes(dir / "model.bin", "not a tokenizer, and not named like one");
  write_bytes(dir / "tok300.bin", serialize(llama2c_vocabulary({{-1, " "}, {-2, "x"}})));
  auto tokenizer = load_tokenizer(dir);
  EXPECT_EQ(tokenizer->vocab_size(), 261);
  EXPECT_EQ(tokenizer->encode("x", true), (Ids{1, 259, 260}));
  // Two candidates: refuse to guess.
  write_bytes(dir / "tok400.bin", serialize(llama2c_vocabulary({{-1, " "}})));
  expect_input_error([&] { load_tokenizer(dir); }, {dir.string(), "tok300.bin", "tok400.bin"});
  // tokenizer.bin is llama2.c's default name and wins over tok*.bin.
  write_bytes(dir / "tokenizer.bin", serialize(llama2c_vocabulary({})));
  EXPECT_EQ(load_tokenizer(dir)->vocab_size(), 259);
  // The older candidates still come first.
  auto with_sentencepiece_file = test::scratch_dir("llama2c-dir-with-model");
  write_bytes(with_sentencepiece_file / "tok300.bin", serialize(llama2c_vocabulary({})));
  write_bytes(with_sentencepiece_file / "tokenizer.model", "");
  expect_input_error([&] { load_tokenizer(with_sentencepiece_file); }, {(with_sentencepiece_file / "tokenizer.model").string()});
}

// --- the stories260K and aidreams260K tokenizers ---

TEST(Llama2cTokenizer, Stories260KMatchesSentencePieceOnTheSameVocabulary) {
  ROME_REQUIRE_SHARED();
  const auto bin_path = test::shared_path("models/stories260K/tok512.bin");
  Llama2cTokenizer llama2c(bin_path);
  SentencePieceTokenizer sentencepiece(test::shared_path("models/stories260K/tok512.model"));
  ASSERT_EQ(llama2c.vocab_size(), 512);
  ASSERT_EQ(sentencepiece.vocab_size(), 512);
  EXPECT_EQ(llama2c.piece(1), "\n<s>\n");
  EXPECT_EQ(llama2c.piece(3), "<0x00>");

  std::vector<std::string> texts = tinystories_lines(30);
  ASSERT_EQ(texts.size(), 30u);
  texts.insert(texts.end(), kTrickyTexts.begin(), kTrickyTexts.end());
  const auto pieces = read_pieces(bin_path);
  for (const auto& text : texts) {
    SCOPED_TRACE(text);
    const Ids ids = llama2c.encode(text, true);
    EXPECT_EQ(ids, sentencepiece.encode(text, true));
    EXPECT_EQ(ids, run_c_encode(pieces, text, true));
    EXPECT_EQ(llama2c.encode(text, false), Ids(ids.begin() + 1, ids.end()));
    EXPECT_EQ(llama2c.decode(ids), text);
    EXPECT_EQ(sentencepiece.decode(ids), text);
    Ids with_eos = ids;
    with_eos.push_back(2);
    EXPECT_EQ(llama2c.decode(with_eos), text);
  }
  EXPECT_EQ(llama2c.encode("", true), sentencepiece.encode("", true));

  // Where SentencePiece's normalizer removes spaces, llama2.c keeps them (as run.c does) and so
  // round-trips exactly, while SentencePiece returns the normalized text.
  for (const auto& text : kExtraSpaceTexts) {
    SCOPED_TRACE("\"" + text + "\"");
    const Ids ids = llama2c.encode(text, true);
    EXPECT_EQ(ids, run_c_encode(pieces, text, true));
    EXPECT_EQ(llama2c.decode(ids), text);
    EXPECT_EQ(sentencepiece.decode(sentencepiece.encode(text, true)), collapse_spaces(text));
    EXPECT_EQ(llama2c.encode(collapse_spaces(text), true), sentencepiece.encode(text, true));
  }
}

TEST(Llama2cTokenizer, Stories260KMatchesSentencePieceOnTheWholeValidationText) {
  ROME_REQUIRE_SHARED();
  Llama2cTokenizer llama2c(test::shared_path("models/stories260K/tok512.bin"));
  SentencePieceTokenizer sentencepiece(test::shared_path("models/stories260K/tok512.model"));
  const auto lines = tinystories_lines(100000, std::string::npos);
  ASSERT_GT(lines.size(), 4000u);
  size_t differing = 0;
  for (const auto& line : lines) {
    if (llama2c.encode(line, true) == sentencepiece.encode(line, true)) continue;
    if (++differing <= 3) ADD_FAILURE() << "ids differ for: " << line;
  }
  EXPECT_EQ(differing, 0u) << "of " << lines.size() << " lines";
}

TEST(Llama2cTokenizer, Stories260KThroughLoadTokenizer) {
  ROME_REQUIRE_SHARED();
  const auto dir = test::shared_path("models/stories260K");
  const Ids expected = Llama2cTokenizer(dir / "tok512.bin").encode("Once upon a time", true);
  auto from_file = load_tokenizer(dir / "tok512.bin");
  EXPECT_EQ(from_file->encode("Once upon a time", true), expected);
  EXPECT_EQ(from_file->unk_id(), std::optional<int64_t>(0));
  // The directory has no tokenizer.model, so tok512.bin (not the checkpoint stories260K.bin) is used.
  auto from_dir = load_tokenizer(dir);
  EXPECT_NE(from_dir->describe().find("tok512.bin"), std::string::npos) << from_dir->describe();
  EXPECT_EQ(from_dir->encode("Once upon a time", true), expected);
  // A checkpoint named directly is refused with its name, not misread.
  expect_input_error([&] { load_tokenizer(dir / "stories260K.bin"); },
                     {(dir / "stories260K.bin").string(), "not a llama2.c tokenizer"});
}

TEST(Llama2cTokenizer, Aidreams260KIsADifferentVocabularyThatRoundTrips) {
  ROME_REQUIRE_SHARED();
  const auto path = test::shared_path("models/aidreams260K/tok512.bin");
  Llama2cTokenizer aidreams(path);
  Llama2cTokenizer stories(test::shared_path("models/stories260K/tok512.bin"));
  EXPECT_EQ(aidreams.vocab_size(), 512);
  int differing = 0;
  for (int64_t id = 259; id < 512; ++id) differing += aidreams.piece(id) != stories.piece(id);
  EXPECT_GT(differing, 100);

  const std::string sentence = "The vectors of precision guide the gradient";
  const Ids ids = aidreams.encode(sentence, true);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_NE(ids, stories.encode(sentence, true));
  EXPECT_EQ(aidreams.decode(ids), sentence);
  EXPECT_EQ(ids, run_c_encode(read_pieces(path), sentence, true));
  for (const auto& texts : {kTrickyTexts, kExtraSpaceTexts})
    for (const auto& text : texts) EXPECT_EQ(aidreams.decode(aidreams.encode(text, true)), text);
  EXPECT_EQ(load_tokenizer(path)->encode(sentence, true), ids);
}

TEST(UnkId, PerTokenizerFamily) {
  ROME_REQUIRE_SHARED();
  SentencePieceTokenizer sentencepiece(test::shared_path("models/stories260K/tok512.model"));
  EXPECT_EQ(sentencepiece.unk_id(), std::optional<int64_t>(0));
  const auto gpt2 = test::shared_path("tokenizers/gpt2");
  auto bpe = BpeTokenizer::from_vocab_and_merges(gpt2 / "vocab.json", gpt2 / "merges.txt");
  EXPECT_EQ(bpe->unk_id(), std::nullopt);
  EXPECT_EQ(load_tokenizer(gpt2)->unk_id(), std::nullopt);
}

}  // namespace
}  // namespace rc
