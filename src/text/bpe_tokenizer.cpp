#include "rome_collapse/text/bpe_tokenizer.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string_view>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include "bpe_merges.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"
#include "rome_collapse/util/utf8.h"

namespace rc {
namespace {

using json = nlohmann::json;

// GPT-2's pre-tokenisation pattern (encoder.py), verbatim.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kEndOfText = "<|endoftext|>";
// Ids beyond this are certainly a corrupt file; refusing them avoids a huge allocation.
constexpr int64_t kMaxTokenId = 10'000'000;
// Bound on cached words so a long-running process cannot grow without limit.
constexpr size_t kMaxCachedWords = 500'000;

// OpenAI's bytes_to_unicode(): printable bytes stand for themselves, the others are shifted to
// U+0100.. so that every byte has a visible, non-space character in the vocabulary.
struct ByteUnicodeTable {
  std::string byte_to_symbol[256];               // UTF-8 of the character standing for each byte
  std::unordered_map<uint32_t, uint8_t> symbol_to_byte;  // code point -> byte

  ByteUnicodeTable() {
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    uint32_t next_shifted = 256;
    for (int b = 0; b < 256; ++b) {
      uint32_t code_point = printable(b) ? static_cast<uint32_t>(b) : next_shifted++;
      append_utf8(byte_to_symbol[b], code_point);
      symbol_to_byte[code_point] = static_cast<uint8_t>(b);
    }
  }
};

const ByteUnicodeTable& byte_unicode_table() {
  static const ByteUnicodeTable table;  // immutable after construction
  return table;
}

// Decodes one UTF-8 code point at `pos`, advancing it; nullopt on malformed input.
std::optional<uint32_t> next_code_point(const std::string& text, size_t& pos) {
  auto lead = static_cast<unsigned char>(text[pos]);
  int length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 0;
  if (length == 0 || pos + length > text.size()) return std::nullopt;
  uint32_t code_point = length == 1 ? lead : lead & (0x7F >> length);
  for (int i = 1; i < length; ++i) {
    auto continuation = static_cast<unsigned char>(text[pos + i]);
    if ((continuation >> 6) != 0x2) return std::nullopt;
    code_point = (code_point << 6) | (continuation & 0x3F);
  }
  pos += length;
  return code_point;
}

// Raw bytes of a vocabulary entry written in the byte-to-unicode alphabet. Entries outside that
// alphabet (not produced by GPT-2 itself) decode as their literal text.
std::string symbol_text_to_bytes(const std::string& token) {
  const auto& table = byte_unicode_table();
  std::string bytes;
  size_t pos = 0;
  while (pos < token.size()) {
    auto code_point = next_code_point(token, pos);
    if (!code_point) return token;
    auto it = table.symbol_to_byte.find(*code_point);
    if (it == table.symbol_to_byte.end()) return token;
    bytes += static_cast<char>(it->second);
  }
  return bytes;
}

std::unordered_map<std::string, int64_t> parse_vocab_object(const json& vocab, const std::string& source) {
  if (!vocab.is_object()) fail_input(source, "vocabulary is not a JSON object of token -> id");
  std::unordered_map<std::string, int64_t> result;
  std::unordered_map<int64_t, std::string> token_of_id;  // two tokens with one id would decode as either
  result.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer()) fail_input(source, "vocabulary entry '" + excerpt(token) + "' has a non-integer id");
    int64_t value = id.get<int64_t>();
    if (value < 0 || value > kMaxTokenId)
      fail_input(source, "vocabulary entry '" + excerpt(token) + "' has an out-of-range id " + std::to_string(value));
    if (auto [other, inserted] = token_of_id.emplace(value, token); !inserted)
      fail_input(source, "vocabulary entries '" + excerpt(other->second) + "' and '" + excerpt(token) + "' have the same id " +
                             std::to_string(value));
    result.emplace(token, value);
  }
  if (result.empty()) fail_input(source, "vocabulary is empty");
  return result;
}

json parse_json_file(const std::filesystem::path& path) {
  return parse_json(read_file(path), path.string());
}

// "a b" -> {a, b}; nullopt unless the line is exactly two non-empty symbols around one space.
std::optional<std::pair<std::string, std::string>> split_merge(const std::string& line) {
  size_t space = line.find(' ');
  if (space == std::string::npos || space == 0 || space + 1 >= line.size() ||
      line.find(' ', space + 1) != std::string::npos)
    return std::nullopt;
  return std::make_pair(line.substr(0, space), line.substr(space + 1));
}

bool mentions_byte_level(const json& component) {
  if (!component.is_object()) return false;
  auto type = component.value("type", std::string());
  if (type == "ByteLevel") return true;
  if (type != "Sequence") return false;
  for (const char* key : {"pretokenizers", "decoders"}) {
    auto it = component.find(key);
    if (it == component.end() || !it->is_array()) continue;
    for (const auto& inner : *it)
      if (mentions_byte_level(inner)) return true;
  }
  return false;
}

}  // namespace

struct BpeTokenizer::CompiledPattern {
  pcre2_code* code = nullptr;
  ~CompiledPattern() { pcre2_code_free(code); }

  CompiledPattern() {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    // MATCH_INVALID_UTF: malformed UTF-8 in the input is skipped by the matcher instead of
    // failing the match; encode() turns those bytes into their own word so nothing is lost.
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                         PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error_code, &error_offset, nullptr);
    if (!code) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error_code, message, sizeof(message));
      throw std::logic_error(std::string("GPT-2 pre-tokenizer pattern does not compile: ") +
                             reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // a failure only means the slower interpreter is used
  }

  // Calls `emit` with each pre-token of `text`, in order; the pieces concatenate back to `text`.
  template <typename Emit>
  void split(const std::string& text, Emit&& emit) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
        pcre2_match_data_create_from_pattern(code, nullptr), &pcre2_match_data_free);
    if (!match) throw std::bad_alloc();
    auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t offset = 0;
    while (offset < text.size()) {
      int rc = pcre2_match(code, subject, text.size(), offset, 0, match.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) {
        emit(std::string_view(text).substr(offset));
        return;
      }
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof(message));
        throw std::runtime_error(std::string("GPT-2 pre-tokenizer failed: ") + reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match.get());
      size_t start = ovector[0], end = ovector[1];
      if (start > offset) emit(std::string_view(text).substr(offset, start - offset));  // malformed UTF-8
      if (end <= start) end = start + 1;  // no alternative matches empty, but never loop forever
      emit(std::string_view(text).substr(start, end - start));
      offset = end;
    }
  }
};

BpeTokenizer::~BpeTokenizer() = default;

BpeTokenizer::BpeTokenizer(const std::unordered_map<std::string, int64_t>& vocab,
                           const std::vector<std::pair<std::string, std::string>>& merges,
                           const std::vector<AddedToken>& added_tokens, const std::string& vocab_source,
                           const std::string& merges_source, std::string description)
    : description_(std::move(description)), pattern_(std::make_unique<CompiledPattern>()) {
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab) max_id = std::max(max_id, id);
  for (const auto& added : added_tokens) max_id = std::max(max_id, added.id);
  id_to_bytes_.resize(static_cast<size_t>(max_id + 1));
  for (const auto& [token, id] : vocab) id_to_bytes_[id] = symbol_text_to_bytes(token);

  const auto& table = byte_unicode_table();
  for (int b = 0; b < 256; ++b) {
    auto it = vocab.find(table.byte_to_symbol[b]);
    if (it == vocab.end())
      fail_input(vocab_source, "vocabulary lacks the symbol for byte " + std::to_string(b) + " ('" +
                                   table.byte_to_symbol[b] + "'); not a byte-level BPE vocabulary");
    byte_ids_[b] = it->second;
  }

  if (merges.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    fail_input(merges_source, "too many merges");
  merge_by_pair_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    auto left_it = vocab.find(left), right_it = vocab.find(right), merged_it = vocab.find(left + right);
    if (left_it == vocab.end() || right_it == vocab.end() || merged_it == vocab.end())
      fail_input(merges_source, "merge #" + std::to_string(rank + 1) + " '" + left + " " + right +
                                    "' uses a token missing from the vocabulary");
    merge_by_pair_.emplace(bpe::merge_key(left_it->second, right_it->second), std::make_pair(static_cast<int32_t>(rank), merged_it->second));  // first rank wins
  }

  for (const auto& added : added_tokens) {
    id_to_bytes_[added.id] = added.content;  // added tokens are literal text, not byte symbols
    if (added.special) dropped_on_decode_.insert(added.id);
  }
  if (auto it = vocab.find(kEndOfText); it != vocab.end()) {
    end_of_text_id_ = it->second;
  } else {
    for (const auto& added : added_tokens)
      if (added.content == kEndOfText) end_of_text_id_ = added.id;
  }
  if (end_of_text_id_) dropped_on_decode_.insert(*end_of_text_id_);
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_vocab_and_merges(const std::filesystem::path& vocab_json,
                                                                   const std::filesystem::path& merges_txt) {
  auto vocab = parse_vocab_object(parse_json_file(vocab_json), vocab_json.string());

  std::vector<std::pair<std::string, std::string>> merges;
  for (bpe::MergeLine& merge : bpe::read_merges_txt(merges_txt))
    merges.emplace_back(std::move(merge.left), std::move(merge.right));
  if (merges.empty()) fail_input(merges_txt.string(), "no merges");

  std::unique_ptr<BpeTokenizer> tokenizer(
      new BpeTokenizer(vocab, merges, {}, vocab_json.string(), merges_txt.string(),
                       "gpt2-bpe " + vocab_json.filename().string() + "+" + merges_txt.filename().string()));
  tokenizer->sources_ = {vocab_json, merges_txt};
  return tokenizer;
}

bool BpeTokenizer::is_byte_level_bpe(const json& document) {
  if (!document.is_object()) return false;
  auto model = document.find("model");
  if (model == document.end() || !model->is_object()) return false;
  if (model->value("type", std::string("BPE")) != "BPE") return false;
  auto byte_fallback = model->find("byte_fallback");
  if (byte_fallback != model->end() && byte_fallback->is_boolean() && byte_fallback->get<bool>()) return false;
  auto component = [&](const char* key) {
    auto it = document.find(key);
    return it == document.end() ? json() : *it;
  };
  return mentions_byte_level(component("pre_tokenizer")) || mentions_byte_level(component("decoder"));
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_tokenizer_json(const std::filesystem::path& tokenizer_json) {
  auto tokenizer = from_tokenizer_json(parse_json_file(tokenizer_json), tokenizer_json);
  tokenizer->sources_ = {tokenizer_json};
  return tokenizer;
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_tokenizer_json(const json& document,
                                                                const std::filesystem::path& source_path) {
  const std::string source = source_path.string();
  if (!document.is_object() || !document.contains("model") || !document["model"].is_object())
    fail_input(source, "no \"model\" object; not a Hugging Face tokenizer.json");
  const json& model = document["model"];
  auto type = model.value("type", std::string("BPE"));
  if (type != "BPE") fail_input(source, "model type is '" + type + "'; only byte-level BPE is supported here");
  if (!is_byte_level_bpe(document))
    fail_input(source, "not a byte-level (GPT-2 style) BPE tokenizer; for SentencePiece-based models "
                       "(Llama) load tokenizer.model instead");
  if (!model.contains("vocab")) fail_input(source, "model has no \"vocab\"");
  auto vocab = parse_vocab_object(model["vocab"], source);

  if (!model.contains("merges") || !model["merges"].is_array()) fail_input(source, "model has no \"merges\" array");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(model["merges"].size());
  size_t index = 0;
  for (const auto& entry : model["merges"]) {
    ++index;
    std::optional<std::pair<std::string, std::string>> merge;
    if (entry.is_string()) {  // older format: "a b"
      merge = split_merge(entry.get<std::string>());
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
      merge = std::make_pair(entry[0].get<std::string>(), entry[1].get<std::string>());  // newer: ["a", "b"]
    }
    if (!merge || merge->first.empty() || merge->second.empty())
      fail_input(source, "model.merges[" + std::to_string(index - 1) + "] is neither \"a b\" nor [\"a\", \"b\"]: " +
                             json_excerpt(entry));
    merges.push_back(std::move(*merge));
  }

  std::vector<AddedToken> added_tokens;
  if (auto it = document.find("added_tokens"); it != document.end() && !it->is_null()) {
    if (!it->is_array()) fail_input(source, "\"added_tokens\" is not an array");
    for (const auto& entry : *it) {
      if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_integer() ||
          !entry.contains("content") || !entry["content"].is_string())
        fail_input(source, "added token without integer \"id\" and string \"content\": " + json_excerpt(entry));
      AddedToken added{entry["content"].get<std::string>(), entry["id"].get<int64_t>(), entry.value("special", false)};
      if (added.id < 0 || added.id > kMaxTokenId)
        fail_input(source, "added token '" + added.content + "' has an out-of-range id");
      added_tokens.push_back(std::move(added));
    }
  }
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(vocab, merges, added_tokens, source, source,
                                                        "gpt2-bpe " + source_path.filename().string()));
}

std::vector<int64_t> BpeTokenizer::bpe(const std::string& word) const {
  std::vector<int64_t> symbols;
  symbols.reserve(word.size());
  for (unsigned char byte : word) symbols.push_back(byte_ids_[byte]);
  bpe::merge_lowest_ranked(
      symbols, merge_by_pair_, [](int64_t id) { return id; }, [](int64_t merged, int64_t, int64_t) { return merged; });
  return symbols;
}

void BpeTokenizer::append_word_ids(const std::string& word, std::vector<int64_t>& out) const {
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = word_cache_.find(word);
    if (it != word_cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int64_t> ids = bpe(word);  // outside the lock: other threads keep encoding meanwhile
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (word_cache_.size() >= kMaxCachedWords) word_cache_.clear();
  word_cache_.emplace(word, std::move(ids));
}

std::vector<int64_t> BpeTokenizer::encode(const std::string& text, bool add_bos) const {
  std::vector<int64_t> ids;
  if (add_bos && end_of_text_id_) ids.push_back(*end_of_text_id_);
  std::string word;
  pattern_->split(text, [&](std::string_view piece) {
    word.assign(piece.data(), piece.size());
    append_word_ids(word, ids);
  });
  return ids;
}

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string text;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size())
      throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " + description_ +
                              " (size " + std::to_string(vocab_size()) + ")");
    if (dropped_on_decode_.count(id)) continue;
    text += id_to_bytes_[static_cast<size_t>(id)];
  }
  return text;
}

}  // namespace rc
