// rc::HfTokenizer: Hugging Face's tokenizer.json pipeline (added tokens, normalizer, pre-tokenizer,
// BPE, post-processor, decoder), following the `tokenizers` crate step by step.
#include "rome_collapse/text/hf_tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <array>
#include <atomic>
#include <limits>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>
#include <unicode/uchar.h>

#include "bpe_merges.h"
#include "hf_pipeline.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"
#include "rome_collapse/util/utf8.h"

namespace rc {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using hf::Piece;
using hf::PieceSink;

constexpr int64_t kMaxTokenId = 10'000'000;  // beyond: a corrupt file (refused before allocating)
constexpr size_t kMaxCachedWords = 500'000;   // bound on the word cache of a long-running process

json parse_json_file(const fs::path& path) {
  // rc::parse_json: nesting depth and repeated keys bounded as for every JSON reader.
  return rc::parse_json(read_file(path), path.string());
}

// GPT-2's bytes_to_unicode(): the vocabulary character standing for each byte.
const std::array<std::string, 256>& byte_symbols() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> symbols;
    uint32_t next_shifted = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      append_utf8(symbols[b], printable ? static_cast<uint32_t>(b) : next_shifted++);
    }
    return symbols;
  }();
  return table;
}

// Raw bytes of a byte-level vocabulary entry; nullopt when it has a character outside the alphabet.
std::optional<std::string> byte_symbols_to_bytes(const std::string& token) {
  static const std::unordered_map<std::string, char> byte_of = [] {
    std::unordered_map<std::string, char> map;
    for (int b = 0; b < 256; ++b) map.emplace(byte_symbols()[b], static_cast<char>(b));
    return map;
  }();
  std::string bytes;
  for (size_t pos = 0; pos < token.size();) {
    size_t length = hf::utf8_char_length(token, pos);
    if (length == 0) return std::nullopt;
    auto it = byte_of.find(token.substr(pos, length));
    if (it == byte_of.end()) return std::nullopt;
    bytes += it->second;
    pos += length;
  }
  return bytes;
}

// ---- BPE model ---------------------------------------------------------------------------------

struct Tok {
  int64_t id;
  uint32_t length;  // bytes of the word this token covers
};

// Tokens of one word, stored in the word cache.
struct TokSpan {
  const Tok* data;
  size_t count;
  const Tok* begin() const { return data; }
  const Tok* end() const { return data + count; }
};

// The word cache: open addressing with linear probing, the key and (for most words) the tokens
// inside the slot, since looking words up is most of the time spent encoding ordinary text.
class WordCache {
 public:
  static uint64_t hash(std::string_view word) {  // FNV-1a: words are short
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : word) h = (h ^ c) * 1099511628211ull;
    return h | 1;  // 0 marks an empty slot
  }
  std::optional<TokSpan> find(std::string_view word, uint64_t h) const {
    if (slots_.empty()) return std::nullopt;
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.hash == 0) return std::nullopt;
      if (slot.hash == h && slot.key == word) return slot.tokens();
    }
  }
  // Valid until the next insert.
  TokSpan insert(std::string_view word, uint64_t h, const std::vector<Tok>& tokens) {
    if (size_ >= kMaxCachedWords) clear();
    if ((size_ + 1) * 2 > slots_.size()) grow();
    ++size_;
    Slot entry;
    entry.hash = h;
    entry.key.assign(word.data(), word.size());
    entry.count = static_cast<uint32_t>(tokens.size());
    if (tokens.size() <= kInline)
      std::copy(tokens.begin(), tokens.end(), entry.inline_tokens);
    else
      entry.more = tokens;
    return place(std::move(entry)).tokens();
  }
  void clear() {
    slots_.clear();
    size_ = 0;
    mask_ = 0;
  }

 private:
  static constexpr size_t kInline = 2;
  struct Slot {
    uint64_t hash = 0;
    std::string key;
    uint32_t count = 0;
    Tok inline_tokens[kInline] = {};
    std::vector<Tok> more;
    TokSpan tokens() const { return {count <= kInline ? inline_tokens : more.data(), count}; }
  };
  Slot& place(Slot&& entry) {
    size_t i = entry.hash & mask_;
    while (slots_[i].hash != 0) i = (i + 1) & mask_;
    slots_[i] = std::move(entry);
    return slots_[i];
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(std::max<size_t>(1024, old.size() * 2), Slot{});
    mask_ = slots_.size() - 1;
    for (auto& slot : old)
      if (slot.hash != 0) place(std::move(slot));
  }
  std::vector<Slot> slots_;
  size_t size_ = 0, mask_ = 0;
};

struct BpeModel {
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::string> id_to_token;  // "" for ids the vocabulary does not use
  std::unordered_map<uint64_t, std::pair<int32_t, int64_t>> merges;  // (left << 32 | right) -> (rank, merged id)
  bool byte_level = false, byte_fallback = false, fuse_unk = false, ignore_merges = false;
  std::optional<int64_t> unk_id;
  std::string prefix, suffix;  // continuing_subword_prefix, end_of_word_suffix ("" when absent)
  std::array<int64_t, 256> byte_symbol_ids{};    // byte-level: id of each byte's symbol, -1 when absent
  std::array<int64_t, 256> byte_fallback_ids{};  // id of "<0xHH>", -1 when absent
  std::unordered_map<std::string, int64_t> raw_vocab;  // byte-level + ignore_merges: raw bytes -> id

  const uint64_t serial = next_serial();

  // Tokens of one pre-token (cached per thread); valid until the next call on this thread.
  TokSpan tokenize(const std::string& word) const;
  WordCache& thread_cache() const;
  BpeModel() = default;
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;
  ~BpeModel();
  static uint64_t next_serial() {
    static std::atomic<uint64_t> counter{0};
    return ++counter;
  }

 private:
  std::vector<Tok> symbolize(const std::string& word) const;
  void add_unit(std::string unit, uint32_t length, bool first, bool last, std::vector<Tok>& symbols,
                std::optional<Tok>& pending_unk) const;
  void merge(std::vector<Tok>& symbols) const;
};

// One character (one byte in byte-level mode) as BPE::merge_word adds it.
void BpeModel::add_unit(std::string unit, uint32_t length, bool first, bool last, std::vector<Tok>& symbols,
                        std::optional<Tok>& pending_unk) const {
  if (!first) unit = prefix + unit;
  if (last) unit += suffix;
  if (auto it = vocab.find(unit); it != vocab.end()) {
    if (pending_unk) symbols.push_back(*pending_unk);
    pending_unk.reset();
    symbols.push_back({it->second, length});
    return;
  }
  if (byte_fallback) {
    std::vector<Tok> bytes;
    for (unsigned char byte : unit) {
      if (byte_fallback_ids[byte] < 0) break;
      bytes.push_back({byte_fallback_ids[byte], 1});
    }
    if (bytes.size() == unit.size()) {  // as Hugging Face: a pending <unk> stays pending
      symbols.insert(symbols.end(), bytes.begin(), bytes.end());
      return;
    }
  }
  if (!unk_id) return;  // no unk token: the character is dropped, as Hugging Face does
  if (pending_unk && fuse_unk) {
    pending_unk->length += length;
    return;
  }
  if (pending_unk) symbols.push_back(*pending_unk);
  pending_unk = Tok{*unk_id, length};
}

std::vector<Tok> BpeModel::symbolize(const std::string& word) const {
  std::vector<Tok> symbols;
  symbols.reserve(word.size());
  if (byte_level && prefix.empty() && suffix.empty()) {  // the common case: one table lookup per byte
    bool complete = true;
    for (unsigned char byte : word) {
      complete = complete && byte_symbol_ids[byte] >= 0;
      symbols.push_back({byte_symbol_ids[byte], 1});
    }
    if (complete) return symbols;
    symbols.clear();  // a byte without a symbol (GPT-NeoX has none for 0xC0, 0xC1, 0xF5..): the general path
  }
  std::optional<Tok> pending_unk;
  for (size_t pos = 0; pos < word.size();) {
    size_t length = byte_level ? 1 : hf::utf8_char_length(word, pos);
    if (length == 0) length = 1;  // an ill-formed byte is a unit of its own
    std::string unit = byte_level ? byte_symbols()[static_cast<unsigned char>(word[pos])] : word.substr(pos, length);
    add_unit(std::move(unit), static_cast<uint32_t>(length), pos == 0, pos + length >= word.size(), symbols, pending_unk);
    pos += length;
  }
  if (pending_unk) symbols.push_back(*pending_unk);
  return symbols;
}

// Repeatedly merges every occurrence of the lowest-ranked mergeable pair (GPT-2's encoder.py; the
// same result as the crate's priority queue).
void BpeModel::merge(std::vector<Tok>& symbols) const {
  bpe::merge_lowest_ranked(
      symbols, merges, [](const Tok& symbol) { return symbol.id; },
      [](int64_t merged, const Tok& left, const Tok& right) { return Tok{merged, left.length + right.length}; });
}

// The word cache is per thread, as in the crate (BPE_LOCAL_CACHE): encode() runs from several
// threads without a lock. Each model has its own serial, so a model created at a freed model's
// address never sees the old model's words.
struct ThreadCaches {
  uint64_t last_serial = 0;
  WordCache* last = nullptr;
  std::unordered_map<uint64_t, WordCache> by_serial;
};
ThreadCaches& thread_caches() {
  static thread_local ThreadCaches caches;
  return caches;
}

WordCache& BpeModel::thread_cache() const {
  ThreadCaches& caches = thread_caches();
  if (caches.last_serial != serial || !caches.last) {
    caches.last = &caches.by_serial[serial];
    caches.last_serial = serial;
  }
  return *caches.last;
}

// Only this thread's cache can be reached here; other threads' are bounded (kMaxCachedWords) and
// freed when those threads end.
BpeModel::~BpeModel() {
  ThreadCaches& caches = thread_caches();
  caches.by_serial.erase(serial);
  if (caches.last_serial == serial) caches.last = nullptr;
}

TokSpan BpeModel::tokenize(const std::string& word) const {
  WordCache& cache = thread_cache();
  const uint64_t h = WordCache::hash(word);
  if (auto cached = cache.find(word, h)) return *cached;
  std::vector<Tok> tokens;
  if (ignore_merges) {  // a word that is itself a token is taken whole (Llama 3)
    const auto& whole = byte_level ? raw_vocab : vocab;
    if (auto it = whole.find(word); it != whole.end()) tokens.push_back({it->second, static_cast<uint32_t>(word.size())});
  }
  if (tokens.empty()) {
    tokens = symbolize(word);
    merge(tokens);
  }
  return cache.insert(word, h, tokens);
}

// ---- added tokens ----------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

bool is_word_code_point(uint32_t code_point) { return code_point == '_' || u_isalnum(static_cast<UChar32>(code_point)); }
bool is_space_code_point(uint32_t code_point) { return u_isUWhiteSpace(static_cast<UChar32>(code_point)); }

// Code point ending at `end` (exclusive); nullopt at the start or on ill-formed bytes.
std::optional<uint32_t> code_point_before(const std::string& text, size_t end) {
  if (end == 0) return std::nullopt;
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  size_t length = hf::utf8_char_length(text, start);
  if (length != end - start) return std::nullopt;
  return hf::utf8_decode(text, start, length);
}

std::optional<uint32_t> code_point_at(const std::string& text, size_t pos) {
  if (pos >= text.size()) return std::nullopt;
  size_t length = hf::utf8_char_length(text, pos);
  if (length == 0) return std::nullopt;
  return hf::utf8_decode(text, pos, length);
}

// Leftmost-longest matching of a set of added tokens (the crate's Aho-Corasick with
// MatchKind::LeftmostLongest), then the lstrip / rstrip / single_word rules of AddedVocabulary.
class AddedTokenMatcher {
 public:
  void add(std::string pattern, size_t token_index) {
    if (pattern.empty()) return;
    auto& bucket = by_first_byte_[static_cast<unsigned char>(pattern[0])];
    bucket.push_back({std::move(pattern), token_index});
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    empty_ = false;
  }
  bool empty() const { return empty_; }

  // Emits `piece` cut into added tokens (added_id set) and the text between them.
  void split(Piece&& piece, const std::vector<AddedToken>& tokens, const PieceSink& emit) const;

 private:
  std::array<std::vector<std::pair<std::string, size_t>>, 256> by_first_byte_;
  bool empty_ = true;
};

void AddedTokenMatcher::split(Piece&& piece, const std::vector<AddedToken>& tokens, const PieceSink& emit) const {
  const std::string& text = piece.text;
  if (empty_ || text.empty()) {
    if (!text.empty()) emit(std::move(piece));
    return;
  }
  size_t emitted = 0;  // start of the text not yet emitted
  size_t scan = 0;     // where the next match may start
  std::vector<std::pair<size_t, size_t>> cuts;  // (begin, end, token) of accepted matches
  std::vector<size_t> cut_tokens;
  while (scan < text.size()) {
    const auto& bucket = by_first_byte_[static_cast<unsigned char>(text[scan])];
    const std::pair<std::string, size_t>* found = nullptr;
    for (const auto& candidate : bucket)
      if (text.compare(scan, candidate.first.size(), candidate.first) == 0) {
        found = &candidate;
        break;
      }
    if (!found) {
      ++scan;
      continue;
    }
    size_t begin = scan, end = scan + found->first.size();
    scan = end;  // the iterator moves past this match even when it is then discarded
    const AddedToken& token = tokens[found->second];
    if (token.single_word) {
      auto before = code_point_before(text, begin);
      auto after = code_point_at(text, end);
      if ((before && is_word_code_point(*before)) || (after && is_word_code_point(*after))) continue;
    }
    if (token.lstrip)  // take the whitespace before it, down to the previous match
      while (begin > emitted) {
        auto before = code_point_before(text, begin);
        if (!before || !is_space_code_point(*before)) break;
        do --begin;
        while (begin > emitted && (static_cast<unsigned char>(text[begin]) & 0xC0) == 0x80);
      }
    if (token.rstrip)
      while (auto after = code_point_at(text, end)) {
        if (!is_space_code_point(*after)) break;
        end += hf::utf8_char_length(text, end);
      }
    scan = std::max(scan, end);
    cuts.emplace_back(begin, end);
    cut_tokens.push_back(found->second);
    emitted = end;
  }
  size_t previous = 0;
  for (size_t i = 0; i < cuts.size(); ++i) {
    if (cuts[i].first > previous) emit(piece.slice(previous, cuts[i].first));
    Piece added = piece.slice(cuts[i].first, cuts[i].second);
    added.added_id = tokens[cut_tokens[i]].id;
    emit(std::move(added));
    previous = cuts[i].second;
  }
  if (previous < text.size()) emit(piece.slice(previous, text.size()));
}

struct SpecialItem {
  int64_t id;
  std::string token;
};

}  // namespace

// ---- the tokenizer ---------------------------------------------------------------------------

struct HfTokenizer::Impl {
  std::string source, description;
  std::vector<fs::path> files;
  std::unique_ptr<hf::Normalizer> normalizer;
  std::unique_ptr<hf::PreTokenizer> pre_tokenizer;
  std::unique_ptr<hf::Decoder> decoder;
  BpeModel model;
  std::vector<AddedToken> added;
  AddedTokenMatcher raw_matcher, normalized_matcher;
  std::unordered_map<int64_t, size_t> added_by_id;
  std::vector<SpecialItem> prefix, suffix;  // what add_special puts around the text
  std::optional<int64_t> eos;
  int64_t vocab_size = 0;

  // Calls on_token(id, piece text or token, span) for each token of `text`, before post-processing.
  template <typename OnToken>
  void run(const std::string& text, OnToken&& on_token) const;
  const std::string& token_text(int64_t id) const {
    auto it = added_by_id.find(id);
    return it != added_by_id.end() ? added[it->second].content : model.id_to_token[static_cast<size_t>(id)];
  }
};

template <typename OnToken>
void HfTokenizer::Impl::run(const std::string& text, OnToken&& on_token) const {
  PieceSink to_model = [&](Piece&& word) {
    size_t at = 0;
    for (const Tok& token : model.tokenize(word.text)) {
      on_token(token.id, word, at, at + token.length);
      at += token.length;
    }
  };
  PieceSink after_normalizer = [&](Piece&& piece) {
    if (piece.added_id >= 0) {
      on_token(piece.added_id, piece, 0, piece.text.size());
    } else if (pre_tokenizer) {
      pre_tokenizer->split(std::move(piece), to_model);
    } else {
      to_model(std::move(piece));
    }
  };
  PieceSink after_raw = [&](Piece&& piece) {
    if (piece.added_id >= 0) {
      on_token(piece.added_id, piece, 0, piece.text.size());
      return;
    }
    if (normalizer) normalizer->normalize(piece);
    if (piece.text.empty()) return;
    normalized_matcher.split(std::move(piece), added, after_normalizer);
  };
  Piece whole;
  whole.text = text;
  raw_matcher.split(std::move(whole), added, after_raw);
}

HfTokenizer::HfTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HfTokenizer::~HfTokenizer() = default;

std::vector<int64_t> HfTokenizer::encode(const std::string& text, bool add_special) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special)
    for (const auto& item : impl_->prefix) ids.push_back(item.id);
  impl_->run(text, [&](int64_t id, const Piece&, size_t, size_t) { ids.push_back(id); });
  if (add_special)
    for (const auto& item : impl_->suffix) ids.push_back(item.id);
  return ids;
}

TokenizedText HfTokenizer::tokenize(const std::string& text, bool add_special) const {
  TokenizedText result;
  auto add = [&](int64_t id, std::string piece, size_t begin, size_t end) {
    result.ids.push_back(id);
    result.pieces.push_back(std::move(piece));
    result.offsets.emplace_back(begin, end);
  };
  if (add_special)
    for (const auto& item : impl_->prefix) add(item.id, item.token, 0, 0);
  impl_->run(text, [&](int64_t id, const Piece& piece, size_t begin, size_t end) {
    hf::Span span = piece.span(begin, end);
    // An added token is spelled as matched (with the spaces lstrip/rstrip took), as the crate does.
    add(id, piece.added_id >= 0 ? piece.text.substr(begin, end - begin) : impl_->token_text(id), span.begin, span.end);
  });
  if (add_special)
    for (const auto& item : impl_->suffix) add(item.id, item.token, text.size(), text.size());
  return result;
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids) const { return decode(ids, true); }

std::string HfTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    if (id < 0 || id >= impl_->vocab_size)
      throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " +
                              impl_->description + " (size " + std::to_string(impl_->vocab_size) + ")");
    auto added = impl_->added_by_id.find(id);
    if (added != impl_->added_by_id.end()) {
      if (skip_special && impl_->added[added->second].special) continue;
      tokens.push_back(impl_->added[added->second].content);
    } else if (!impl_->model.id_to_token[static_cast<size_t>(id)].empty()) {
      tokens.push_back(impl_->model.id_to_token[static_cast<size_t>(id)]);
    }
  }
  if (!impl_->decoder) {  // the crate joins the tokens with spaces when there is no decoder
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) joined += (i ? " " : "") + tokens[i];
    return joined;
  }
  impl_->decoder->decode_chain(tokens);
  std::string text;
  for (const auto& token : tokens) text += token;
  return text;
}

bool HfTokenizer::adds_bos_by_default() const { return !impl_->prefix.empty(); }
std::optional<int64_t> HfTokenizer::bos_id() const {
  if (impl_->prefix.empty()) return std::nullopt;
  return impl_->prefix.front().id;
}
std::optional<int64_t> HfTokenizer::eos_id() const { return impl_->eos; }
std::optional<int64_t> HfTokenizer::unk_id() const { return impl_->model.unk_id; }
int64_t HfTokenizer::vocab_size() const { return impl_->vocab_size; }
std::string HfTokenizer::describe() const { return impl_->description; }
std::vector<fs::path> HfTokenizer::source_files() const { return impl_->files; }

// ---- reading tokenizer.json -------------------------------------------------------------------

namespace {

std::string component_type(const json& spec) {
  return spec.is_object() && spec.contains("type") && spec["type"].is_string() ? spec["type"].get<std::string>() : "";
}

// "a b" or ["a", "b"].
std::optional<std::pair<std::string, std::string>> parse_merge(const json& entry) {
  if (entry.is_string()) {
    const auto& line = entry.get_ref<const std::string&>();
    size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 >= line.size() ||
        line.find(' ', space + 1) != std::string::npos)
      return std::nullopt;
    return std::make_pair(line.substr(0, space), line.substr(space + 1));
  }
  if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string() &&
      !entry[0].get_ref<const std::string&>().empty() && !entry[1].get_ref<const std::string&>().empty())
    return std::make_pair(entry[0].get<std::string>(), entry[1].get<std::string>());
  return std::nullopt;
}

std::string optional_string(const json& spec, const char* key, const std::string& source) {
  auto it = spec.find(key);
  if (it == spec.end() || it->is_null()) return "";
  if (!it->is_string()) fail_input(source, std::string("model.") + key + " is neither null nor a string");
  return it->get<std::string>();
}

void read_bpe_vocab(const json& model, const std::string& source, BpeModel& bpe) {
  auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) fail_input(source, "model.vocab is not an object of token -> id");
  if (vocab_it->empty()) fail_input(source, "model.vocab is empty");
  bpe.vocab.reserve(vocab_it->size());
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab_it->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId)
      fail_input(source, "model.vocab entry '" + token + "' has no valid id: " + id.dump());
    bpe.vocab.emplace(token, id.get<int64_t>());
    max_id = std::max(max_id, id.get<int64_t>());
  }
  bpe.id_to_token.assign(static_cast<size_t>(max_id + 1), std::string());
  for (const auto& [token, id] : bpe.vocab) bpe.id_to_token[static_cast<size_t>(id)] = token;
}

void read_bpe_merges(const json& model, const std::string& source, BpeModel& bpe) {
  auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) fail_input(source, "model.merges is not an array");
  if (merges_it->size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) fail_input(source, "too many merges");
  bpe.merges.reserve(merges_it->size());
  const size_t prefix_length = bpe.prefix.size();
  for (size_t rank = 0; rank < merges_it->size(); ++rank) {
    const json& entry = (*merges_it)[rank];
    auto merge = parse_merge(entry);
    if (!merge) fail_input(source, "model.merges[" + std::to_string(rank) + "] is neither \"a b\" nor [\"a\", \"b\"]: " + entry.dump());
    const auto& [left, right] = *merge;
    // With a continuing_subword_prefix the right part loses it in the merged token (BPE::from_files).
    std::string merged = left + (right.size() >= prefix_length ? right.substr(prefix_length) : right);
    auto left_it = bpe.vocab.find(left), right_it = bpe.vocab.find(right), merged_it = bpe.vocab.find(merged);
    if (left_it == bpe.vocab.end() || right_it == bpe.vocab.end() || merged_it == bpe.vocab.end())
      fail_input(source, "model.merges[" + std::to_string(rank) + "] '" + left + " " + right +
                             "' uses a token missing from model.vocab");
    bpe.merges.emplace(rc::bpe::merge_key(left_it->second, right_it->second), std::make_pair(static_cast<int32_t>(rank), merged_it->second));  // first rank wins
  }
}

void read_bpe_model(const json& model, const std::string& source, bool byte_level, BpeModel& bpe) {
  if (!model.is_object()) fail_input(source, "no \"model\" object; not a Hugging Face tokenizer.json");
  const std::string type = component_type(model).empty() ? "BPE" : component_type(model);
  if (type != "BPE")
    fail_input(source, "model of type '" + type + "' is not supported (only BPE; WordPiece, Unigram and WordLevel are not)");
  if (auto dropout = model.find("dropout"); dropout != model.end() && !dropout->is_null() &&
                                             !(dropout->is_number() && dropout->get<double>() == 0.0))
    fail_input(source, "model.dropout " + dropout->dump() + " makes BPE random; only null is supported");
  bpe.byte_level = byte_level;
  bpe.byte_fallback = model.value("byte_fallback", false);
  bpe.fuse_unk = model.value("fuse_unk", false);
  bpe.ignore_merges = model.value("ignore_merges", false);
  bpe.prefix = optional_string(model, "continuing_subword_prefix", source);
  bpe.suffix = optional_string(model, "end_of_word_suffix", source);
  read_bpe_vocab(model, source, bpe);
  read_bpe_merges(model, source, bpe);
  if (std::string unk = optional_string(model, "unk_token", source); !unk.empty()) {
    auto it = bpe.vocab.find(unk);
    if (it == bpe.vocab.end()) fail_input(source, "model.unk_token '" + unk + "' is not in model.vocab");
    bpe.unk_id = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto symbol = bpe.vocab.find(byte_symbols()[b]);
    bpe.byte_symbol_ids[b] = symbol == bpe.vocab.end() ? -1 : symbol->second;
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto fallback = bpe.vocab.find(name);
    bpe.byte_fallback_ids[b] = fallback == bpe.vocab.end() ? -1 : fallback->second;
  }
  if (byte_level && bpe.ignore_merges)
    for (const auto& [token, id] : bpe.vocab)
      if (auto bytes = byte_symbols_to_bytes(token)) bpe.raw_vocab.emplace(*bytes, id);
}

std::vector<AddedToken> read_added_tokens(const json& document, const std::string& source) {
  std::vector<AddedToken> added;
  auto it = document.find("added_tokens");
  if (it == document.end() || it->is_null()) return added;
  if (!it->is_array()) fail_input(source, "\"added_tokens\" is not an array");
  for (const auto& entry : *it) {
    if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_integer() || !entry.contains("content") ||
        !entry["content"].is_string() || entry["content"].get_ref<const std::string&>().empty())
      fail_input(source, "added token without integer \"id\" and non-empty string \"content\": " + entry.dump());
    AddedToken token;
    token.content = entry["content"].get<std::string>();
    token.id = entry["id"].get<int64_t>();
    if (token.id < 0 || token.id > kMaxTokenId) fail_input(source, "added token '" + token.content + "' has an out-of-range id");
    auto bool_field = [&](const char* key, bool fallback) {
      auto field = entry.find(key);
      return field != entry.end() && field->is_boolean() ? field->get<bool>() : fallback;
    };
    token.special = bool_field("special", false);
    token.lstrip = bool_field("lstrip", false);
    token.rstrip = bool_field("rstrip", false);
    token.single_word = bool_field("single_word", false);
    token.normalized = bool_field("normalized", !token.special);
    added.push_back(std::move(token));
  }
  return added;
}

// TemplateProcessing's "single" template: the special tokens before and after $A.
void read_template(const json& spec, const std::string& source, std::vector<SpecialItem>& prefix,
                   std::vector<SpecialItem>& suffix) {
  auto single = spec.find("single");
  auto specials = spec.find("special_tokens");
  if (single == spec.end() || !single->is_array() || specials == spec.end() || !specials->is_object())
    fail_input(source, "post_processor of type 'TemplateProcessing' needs \"single\" and \"special_tokens\"");
  std::vector<SpecialItem> before, after;
  bool seen_sequence = false;
  for (const auto& item : *single) {
    if (item.contains("Sequence")) {
      if (seen_sequence || item["Sequence"].value("id", "A") != "A")
        fail_input(source, "post_processor TemplateProcessing: \"single\" must hold the sequence $A once");
      seen_sequence = true;
      continue;
    }
    const json& special = item.value("SpecialToken", json());
    const std::string name = special.is_object() ? special.value("id", "") : "";
    auto definition = specials->find(name);
    if (name.empty() || definition == specials->end() || !definition->contains("ids") || !(*definition)["ids"].is_array())
      fail_input(source, "post_processor TemplateProcessing: special token '" + name + "' is not in special_tokens");
    const json& ids = (*definition)["ids"];
    const json tokens = definition->value("tokens", json::array());
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!ids[i].is_number_integer()) fail_input(source, "post_processor TemplateProcessing: '" + name + "' has a non-integer id");
      std::string token = i < tokens.size() && tokens[i].is_string() ? tokens[i].get<std::string>() : name;
      (seen_sequence ? after : before).push_back({ids[i].get<int64_t>(), token});
    }
  }
  if (!seen_sequence) fail_input(source, "post_processor TemplateProcessing: \"single\" has no $A");
  prefix.insert(prefix.begin(), before.begin(), before.end());  // an outer template wraps an inner one
  suffix.insert(suffix.end(), after.begin(), after.end());
}

void read_post_processor(const json& spec, const std::string& source, std::vector<SpecialItem>& prefix,
                         std::vector<SpecialItem>& suffix) {
  if (spec.is_null()) return;
  const std::string type = component_type(spec);
  if (type == "ByteLevel") return;  // only trims offsets; the ids are unchanged
  if (type == "TemplateProcessing") return read_template(spec, source, prefix, suffix);
  if (type == "Sequence") {
    auto list = spec.find("processors");
    if (list == spec.end() || !list->is_array()) fail_input(source, "post_processor of type 'Sequence' needs \"processors\"");
    for (const auto& step : *list) read_post_processor(step, source, prefix, suffix);
    return;
  }
  fail_input(source, "post_processor of type '" + (type.empty() ? std::string("(none)") : type) +
                         "' is not supported (supported: TemplateProcessing, ByteLevel, Sequence)");
}

std::string config_token(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) return value["content"].get<std::string>();
  return "";
}

// eos: tokenizer_config.json's eos_token where the folder has one, else the template's closing
// special token, else a conventional end-of-text token present in the vocabulary.
std::optional<int64_t> find_eos(const HfTokenizer::Impl& impl, const json& config) {
  auto id_of = [&](const std::string& content) -> std::optional<int64_t> {
    for (const auto& token : impl.added)
      if (token.content == content) return token.id;
    if (auto it = impl.model.vocab.find(content); it != impl.model.vocab.end()) return it->second;
    return std::nullopt;
  };
  if (config.is_object() && config.contains("eos_token"))
    if (auto id = id_of(config_token(config["eos_token"]))) return id;
  if (!impl.suffix.empty()) return impl.suffix.back().id;
  for (const char* name : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"})
    if (auto id = id_of(name)) return id;
  return std::nullopt;
}

}  // namespace

std::unique_ptr<HfTokenizer> HfTokenizer::from_document(const json& document, const std::string& source,
                                                        std::vector<fs::path> files) {
  if (!document.is_object()) fail_input(source, "not a JSON object; not a Hugging Face tokenizer.json");
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  impl->files = std::move(files);
  auto field = [&](const char* key) { return document.contains(key) ? document[key] : json(); };
  impl->normalizer = hf::make_normalizer(field("normalizer"), source);
  impl->pre_tokenizer = hf::make_pre_tokenizer(field("pre_tokenizer"), source);
  impl->decoder = hf::make_decoder(field("decoder"), source);
  read_post_processor(field("post_processor"), source, impl->prefix, impl->suffix);
  const bool byte_level = impl->pre_tokenizer && impl->pre_tokenizer->is_byte_level();
  read_bpe_model(field("model"), source, byte_level, impl->model);

  impl->added = read_added_tokens(document, source);
  int64_t max_id = static_cast<int64_t>(impl->model.id_to_token.size()) - 1;
  for (size_t i = 0; i < impl->added.size(); ++i) {
    const AddedToken& token = impl->added[i];
    impl->added_by_id[token.id] = i;
    max_id = std::max(max_id, token.id);
    if (!token.normalized) {
      impl->raw_matcher.add(token.content, i);
    } else {  // matched against the normalized text, so in its normalized form
      Piece content;
      content.text = token.content;
      if (impl->normalizer) impl->normalizer->normalize(content);
      impl->normalized_matcher.add(content.text, i);
    }
  }
  impl->vocab_size = max_id + 1;
  impl->model.id_to_token.resize(static_cast<size_t>(impl->vocab_size));
  for (const auto& item : impl->prefix)
    if (item.id < 0 || item.id >= impl->vocab_size) fail_input(source, "post_processor adds id " + std::to_string(item.id) + " outside the vocabulary");
  for (const auto& item : impl->suffix)
    if (item.id < 0 || item.id >= impl->vocab_size) fail_input(source, "post_processor adds id " + std::to_string(item.id) + " outside the vocabulary");

  json config;
  if (!impl->files.empty()) {
    fs::path config_path = impl->files.front().parent_path() / "tokenizer_config.json";
    std::error_code ec;
    if (fs::is_regular_file(config_path, ec)) config = parse_json_file(config_path);
  }
  impl->eos = find_eos(*impl, config);
  std::string names;
  for (const auto& file : impl->files) names += (names.empty() ? "" : "+") + file.filename().string();
  impl->description = "hf-bpe" + std::string(byte_level ? " byte-level" : "") + " " + (names.empty() ? source : names);
  return std::unique_ptr<HfTokenizer>(new HfTokenizer(std::move(impl)));
}

nlohmann::json HfTokenizer::byte_level_alphabet() {
  json alphabet = json::array();
  for (const auto& symbol : byte_symbols()) alphabet.push_back(symbol);
  return alphabet;
}

std::unique_ptr<HfTokenizer> HfTokenizer::from_tokenizer_json(const fs::path& tokenizer_json) {
  return from_document(parse_json_file(tokenizer_json), tokenizer_json.string(), {tokenizer_json});
}

}  // namespace rc
