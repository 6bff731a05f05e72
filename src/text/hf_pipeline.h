#pragma once
// Internal to the text layer: the pieces of a Hugging Face tokenizer.json pipeline (normalizers,
// pre-tokenizers, decoders) as HfTokenizer composes them. Each component mirrors the one of the
// same "type" in Hugging Face's `tokenizers` library; offsets are byte offsets into the input.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace rc::hf {

// ---- UTF-8 -------------------------------------------------------------------------------------
// Length of the well-formed UTF-8 character at `pos` (1..4), or 0 when the bytes there are not one.
size_t utf8_char_length(std::string_view text, size_t pos);
uint32_t utf8_decode(std::string_view text, size_t pos, size_t length);
// As Rust's String::from_utf8_lossy: each maximal ill-formed subsequence becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// ---- Pieces of text with their origin -------------------------------------------------------------
struct Span {
  uint32_t begin = 0, end = 0;
};

// A run of (normalized) text and, for each of its bytes, where it came from in the input.
struct Piece {
  std::string text;
  size_t origin = 0;       // input offset of text[0] while `align` is empty (bytes map 1:1)
  std::vector<Span> align;  // per byte of `text`: its range in the input, once a transform broke 1:1
  int64_t added_id = -1;    // >= 0: an added token, kept away from normalizers, pre-tokenizers and the model

  // Input range covered by bytes [begin, end) of `text` (an empty range at the start when begin == end).
  Span span(size_t begin, size_t end) const;
  Piece slice(size_t begin, size_t end) const;
  size_t input_start() const { return align.empty() ? origin : align.front().begin; }
};

// Builds a Piece byte by byte with explicit origins (for transforms that change lengths).
class PieceBuilder {
 public:
  void append(std::string_view bytes, Span from);
  // Bytes [begin, end) of `source`, keeping each byte's own origin.
  void copy(const Piece& source, size_t begin, size_t end);
  Piece finish(int64_t added_id = -1);

 private:
  std::string text_;
  std::vector<Span> align_;
};

// ---- Regular expressions (PCRE2, UTF + Unicode properties, JIT) -----------------------------------
class Regex {
 public:
  // InputError naming `source` when `pattern` does not compile.
  Regex(const std::string& pattern, const std::string& source);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Calls emit(begin, end) for each successive non-overlapping match in `text`. InputError naming
  // the file when the pattern cannot be matched (e.g. PCRE2's backtracking limit).
  void for_each_match(std::string_view text, const std::function<void(size_t, size_t)>& emit) const;

 private:
  void* code_ = nullptr;  // pcre2_code*
  std::string pattern_, source_;
};

// Matches of a pattern inside a text as Hugging Face's Pattern::find_matches returns them: the whole
// text covered by alternating (range, is_match) parts.
struct MatchPart {
  size_t begin, end;
  bool is_match;
};
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
// Applies `behavior` (NormalizedString::split); returns the kept ranges, empty ones included.
std::vector<std::pair<size_t, size_t>> apply_split_behavior(const std::vector<MatchPart>& parts,
                                                           SplitBehavior behavior);

// ---- Components ---------------------------------------------------------------------------------
using PieceSink = std::function<void(Piece&&)>;

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(Piece& piece) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits `piece` (never an added token) and emits the non-empty sub-pieces, in order.
  virtual void split(Piece&& piece, const PieceSink& emit) const = 0;
  // True for ByteLevel: the model then sees every byte as its GPT-2 byte symbol.
  virtual bool is_byte_level() const { return false; }
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// Built from the tokenizer.json objects; InputError naming `source` and the component's `type` for
// anything unsupported. A null JSON gives nullptr (no such stage).
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& spec, const std::string& source);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& spec, const std::string& source);
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& spec, const std::string& source);

// GPT-2's pre-tokenisation pattern (encoder.py; ByteLevel's use_regex).
extern const char* const kGpt2Pattern;

}  // namespace rc::hf
