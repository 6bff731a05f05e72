// Normalizers, pre-tokenizers and decoders of Hugging Face's tokenizer.json, one class per "type".
#include "hf_pipeline.h"

#include <algorithm>
#include <stdexcept>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/utf8.h"

namespace rc::hf {

using json = nlohmann::json;

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- UTF-8 -------------------------------------------------------------------------------------

size_t utf8_char_length(std::string_view text, size_t pos) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(pos);
  if (lead < 0x80) return 1;
  size_t length = lead >= 0xC2 && lead <= 0xDF ? 2 : lead >= 0xE0 && lead <= 0xEF ? 3 : lead >= 0xF0 && lead <= 0xF4 ? 4 : 0;
  if (length == 0 || pos + length > text.size()) return 0;
  // Second-byte ranges exclude overlong forms, surrogates and code points above U+10FFFF.
  const unsigned char second = byte(pos + 1);
  unsigned char low = 0x80, high = 0xBF;
  if (lead == 0xE0) low = 0xA0;
  if (lead == 0xED) high = 0x9F;
  if (lead == 0xF0) low = 0x90;
  if (lead == 0xF4) high = 0x8F;
  if (second < low || second > high) return 0;
  for (size_t i = 2; i < length; ++i)
    if ((byte(pos + i) & 0xC0) != 0x80) return 0;
  return length;
}

uint32_t utf8_decode(std::string_view text, size_t pos, size_t length) {
  auto lead = static_cast<unsigned char>(text[pos]);
  uint32_t code_point = length == 1 ? lead : lead & (0x7F >> length);
  for (size_t i = 1; i < length; ++i) code_point = (code_point << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
  return code_point;
}

namespace {
// Bytes at `pos` that start a well-formed sequence but do not complete it (at least 1).
size_t ill_formed_prefix_length(std::string_view bytes, size_t pos) {
  const auto lead = static_cast<unsigned char>(bytes[pos]);
  size_t length = lead >= 0xC2 && lead <= 0xDF ? 2 : lead >= 0xE0 && lead <= 0xEF ? 3 : lead >= 0xF0 && lead <= 0xF4 ? 4 : 0;
  if (length == 0) return 1;
  unsigned char low = lead == 0xE0 ? 0xA0 : lead == 0xF0 ? 0x90 : 0x80;
  unsigned char high = lead == 0xED ? 0x9F : lead == 0xF4 ? 0x8F : 0xBF;
  size_t consumed = 1;
  while (consumed < length && pos + consumed < bytes.size()) {
    const auto next = static_cast<unsigned char>(bytes[pos + consumed]);
    if (next < low || next > high) break;
    ++consumed;
    low = 0x80;
    high = 0xBF;
  }
  return consumed;
}
}  // namespace

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t length = utf8_char_length(bytes, pos);
    if (length > 0) {
      out.append(bytes.substr(pos, length));
      pos += length;
      continue;
    }
    // The maximal prefix of a well-formed sequence is one replacement character.
    out += "\xEF\xBF\xBD";
    pos += ill_formed_prefix_length(bytes, pos);
  }
  return out;
}

// ---- Pieces ------------------------------------------------------------------------------------

Span Piece::span(size_t begin, size_t end) const {
  if (align.empty()) return {static_cast<uint32_t>(origin + begin), static_cast<uint32_t>(origin + end)};
  if (begin >= end) {
    uint32_t at = begin < align.size() ? align[begin].begin : (align.empty() ? 0 : align.back().end);
    return {at, at};
  }
  Span result = align[begin];
  for (size_t i = begin + 1; i < end; ++i) {
    result.begin = std::min(result.begin, align[i].begin);
    result.end = std::max(result.end, align[i].end);
  }
  return result;
}

Piece Piece::slice(size_t begin, size_t end) const {
  Piece part;
  part.text.assign(text, begin, end - begin);
  part.added_id = added_id;
  if (align.empty())
    part.origin = origin + begin;
  else
    part.align.assign(align.begin() + static_cast<std::ptrdiff_t>(begin), align.begin() + static_cast<std::ptrdiff_t>(end));
  return part;
}

void PieceBuilder::append(std::string_view bytes, Span from) {
  text_.append(bytes);
  align_.insert(align_.end(), bytes.size(), from);
}

void PieceBuilder::copy(const Piece& source, size_t begin, size_t end) {
  text_.append(source.text, begin, end - begin);
  for (size_t i = begin; i < end; ++i) align_.push_back(source.span(i, i + 1));
}

Piece PieceBuilder::finish(int64_t added_id) {
  Piece piece;
  piece.text = std::move(text_);
  piece.align = std::move(align_);
  piece.added_id = added_id;
  return piece;
}

// ---- Regex -------------------------------------------------------------------------------------

Regex::Regex(const std::string& pattern, const std::string& source) : pattern_(pattern), source_(source) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // MATCH_INVALID_UTF: malformed UTF-8 is skipped by the matcher (left between matches) instead of
  // failing; Hugging Face only ever sees valid UTF-8, so such bytes have no reference behaviour.
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error_code, &error_offset, nullptr);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    fail_input(source, "regular expression /" + pattern + "/ does not compile at offset " +
                           std::to_string(error_offset) + ": " + reinterpret_cast<const char*>(message));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // failure only means the slower interpreter
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::for_each_match(std::string_view text, const std::function<void(size_t, size_t)>& emit) const {
  auto* code = static_cast<pcre2_code*>(code_);
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
      pcre2_match_data_create_from_pattern(code, nullptr), &pcre2_match_data_free);
  if (!match) throw std::bad_alloc();
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t offset = 0;
  while (offset <= text.size()) {
    int rc = pcre2_match(code, subject, text.size(), offset, 0, match.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      fail_input(source_, "regular expression /" + pattern_ + "/ failed on the text: " +
                              reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match.get());
    size_t begin = ovector[0], end = ovector[1];
    emit(begin, end);
    if (end > begin) {
      offset = end;
    } else {  // an empty match: step over one character so the scan always advances
      if (begin >= text.size()) return;
      size_t length = utf8_char_length(text, begin);
      offset = begin + (length ? length : 1);
    }
  }
}

std::vector<std::pair<size_t, size_t>> apply_split_behavior(const std::vector<MatchPart>& parts,
                                                           SplitBehavior behavior) {
  std::vector<std::pair<size_t, size_t>> kept;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& part : parts) kept.emplace_back(part.begin, part.end);
      break;
    case SplitBehavior::kRemoved:
      for (const auto& part : parts)
        if (!part.is_match) kept.emplace_back(part.begin, part.end);
      break;
    case SplitBehavior::kContiguous:
      for (const auto& part : parts) {
        if (part.is_match == previous_match && !kept.empty())
          kept.back().second = part.end;
        else
          kept.emplace_back(part.begin, part.end);
        previous_match = part.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const auto& part : parts) {
        if (part.is_match && !previous_match && !kept.empty())
          kept.back().second = part.end;
        else
          kept.emplace_back(part.begin, part.end);
        previous_match = part.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty())
          kept.back().first = it->begin;
        else
          kept.emplace_back(it->begin, it->end);
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  return kept;
}

namespace {

// ---- helpers for building components ---------------------------------------------------------------

std::string type_of(const json& spec) {
  auto it = spec.find("type");
  return it != spec.end() && it->is_string() ? it->get<std::string>() : std::string();
}

[[noreturn]] void refuse(const std::string& source, const std::string& stage, const json& spec, const std::string& why) {
  const std::string type = type_of(spec);
  fail_input(source, stage + " of type '" + (type.empty() ? std::string("(none)") : type) + "' " + why);
}

bool flag(const json& spec, const char* key, bool fallback) {
  auto it = spec.find(key);
  return it != spec.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

std::string string_field(const json& spec, const char* key, const std::string& source, const std::string& stage,
                         std::optional<std::string> fallback = std::nullopt) {
  auto it = spec.find(key);
  if (it != spec.end() && it->is_string()) return it->get<std::string>();
  if (fallback && (it == spec.end() || it->is_null())) return *fallback;
  refuse(source, stage, spec, std::string("needs a string \"") + key + "\"");
}

const json& array_field(const json& spec, const char* key, const std::string& source, const std::string& stage) {
  auto it = spec.find(key);
  if (it == spec.end() || !it->is_array()) refuse(source, stage, spec, std::string("needs an array \"") + key + "\"");
  return *it;
}

// A tokenizer.json pattern: {"String": "..."} (literal) or {"Regex": "..."}.
struct Pattern {
  std::string literal;
  std::unique_ptr<Regex> regex;

  Pattern(const json& spec, const std::string& source, const std::string& stage, const json& owner) {
    if (spec.is_object() && spec.contains("Regex") && spec["Regex"].is_string()) {
      regex = std::make_unique<Regex>(spec["Regex"].get<std::string>(), source);
    } else if (spec.is_object() && spec.contains("String") && spec["String"].is_string()) {
      literal = spec["String"].get<std::string>();
      if (literal.empty()) refuse(source, stage, owner, "has an empty \"String\" pattern");
    } else {
      refuse(source, stage, owner, "needs \"pattern\" {\"String\": ...} or {\"Regex\": ...}");
    }
  }

  std::vector<MatchPart> find_matches(std::string_view text) const {
    std::vector<MatchPart> parts;
    if (text.empty()) return {{0, 0, false}};
    size_t previous = 0;
    auto add = [&](size_t begin, size_t end) {
      if (previous != begin) parts.push_back({previous, begin, false});
      parts.push_back({begin, end, true});
      previous = end;
    };
    if (regex) {
      regex->for_each_match(text, add);
    } else {
      for (size_t at = text.find(literal); at != std::string_view::npos; at = text.find(literal, at + literal.size()))
        add(at, at + literal.size());
    }
    if (previous != text.size()) parts.push_back({previous, text.size(), false});
    return parts;
  }
};

// Emits the non-empty kept ranges of `piece` as pieces.
void emit_ranges(Piece&& piece, const std::vector<std::pair<size_t, size_t>>& ranges, const PieceSink& emit) {
  if (ranges.size() == 1 && ranges[0].first == 0 && ranges[0].second == piece.text.size()) {
    if (!piece.text.empty()) emit(std::move(piece));
    return;
  }
  for (const auto& [begin, end] : ranges)
    if (end > begin) emit(piece.slice(begin, end));
}

// Replaces every match of `pattern` in `piece` by `content`, the new bytes standing for the match.
void replace_matches(Piece& piece, const Pattern& pattern, const std::string& content) {
  auto parts = pattern.find_matches(piece.text);
  bool any = std::any_of(parts.begin(), parts.end(), [](const MatchPart& part) { return part.is_match; });
  if (!any) return;
  PieceBuilder out;
  for (const auto& part : parts) {
    if (part.is_match)
      out.append(content, piece.span(part.begin, part.end));
    else
      out.copy(piece, part.begin, part.end);
  }
  piece = out.finish(piece.added_id);
}

// ---- normalizers ---------------------------------------------------------------------------------

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(const icu::Normalizer2* form) : form_(form) {}
  void normalize(Piece& piece) const override {
    const auto& text = piece.text;
    if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) return;
    UErrorCode status = U_ZERO_ERROR;
    if (form_->isNormalizedUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size())), status) &&
        U_SUCCESS(status))
      return;
    // Normalise segment by segment (cut where the form has a boundary) so that each output byte
    // keeps the input range of the segment it came from.
    PieceBuilder out;
    size_t segment = 0, pos = 0;
    auto flush = [&](size_t end) {
      if (end > segment) append_segment(piece, segment, end, out);
      segment = end;
    };
    while (pos < text.size()) {
      size_t length = utf8_char_length(text, pos);
      if (length == 0) {  // ill-formed byte: kept as it is, its own segment
        flush(pos);
        out.copy(piece, pos, pos + 1);
        segment = ++pos;
        continue;
      }
      if (pos > segment && form_->hasBoundaryBefore(static_cast<UChar32>(utf8_decode(text, pos, length)))) flush(pos);
      pos += length;
    }
    flush(pos);
    piece = out.finish(piece.added_id);
  }

 private:
  void append_segment(const Piece& piece, size_t begin, size_t end, PieceBuilder& out) const {
    std::string normalized;
    icu::StringByteSink<std::string> sink(&normalized);
    UErrorCode status = U_ZERO_ERROR;
    form_->normalizeUTF8(0, icu::StringPiece(piece.text.data() + begin, static_cast<int32_t>(end - begin)), sink,
                         nullptr, status);
    if (U_FAILURE(status)) throw std::runtime_error(std::string("Unicode normalisation failed: ") + u_errorName(status));
    if (normalized.compare(0, std::string::npos, piece.text, begin, end - begin) == 0)
      out.copy(piece, begin, end);
    else
      out.append(normalized, piece.span(begin, end));
  }
  const icu::Normalizer2* form_;
};

const icu::Normalizer2* unicode_form(const std::string& type) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* form = type == "NFC"    ? icu::Normalizer2::getNFCInstance(status)
                                 : type == "NFD"  ? icu::Normalizer2::getNFDInstance(status)
                                 : type == "NFKC" ? icu::Normalizer2::getNFKCInstance(status)
                                                  : icu::Normalizer2::getNFKDInstance(status);
  if (U_FAILURE(status) || !form) throw std::runtime_error("ICU normalisation data unavailable for " + type);
  return form;
}

class LowercaseNormalizer : public Normalizer {
 public:
  void normalize(Piece& piece) const override {
    PieceBuilder out;
    bool changed = false;
    for (size_t pos = 0; pos < piece.text.size();) {
      size_t length = utf8_char_length(piece.text, pos);
      if (length == 0) {
        out.copy(piece, pos, pos + 1);
        ++pos;
        continue;
      }
      uint32_t code_point = utf8_decode(piece.text, pos, length);
      auto lower = static_cast<uint32_t>(u_tolower(static_cast<UChar32>(code_point)));
      if (lower == code_point) {
        out.copy(piece, pos, pos + length);
      } else {
        std::string bytes;
        append_utf8(bytes, lower);
        out.append(bytes, piece.span(pos, pos + length));
        changed = true;
      }
      pos += length;
    }
    if (changed) piece = out.finish(piece.added_id);
  }
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(Piece& piece) const override {
    if (piece.text.empty() || prefix_.empty()) return;
    PieceBuilder out;
    Span start = piece.span(0, 0);
    out.append(prefix_, start);
    out.copy(piece, 0, piece.text.size());
    piece = out.finish(piece.added_id);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(const json& spec, const std::string& source)
      : pattern_(spec.value("pattern", json()), source, "normalizer", spec),
        content_(string_field(spec, "content", source, "normalizer")) {}
  void normalize(Piece& piece) const override { replace_matches(piece, pattern_, content_); }

 private:
  Pattern pattern_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(Piece& piece) const override {
    size_t begin = 0, end = piece.text.size();
    auto is_space_at = [&](size_t pos, size_t length) {
      return length > 0 && u_isUWhiteSpace(static_cast<UChar32>(utf8_decode(piece.text, pos, length)));
    };
    while (left_ && begin < end) {
      size_t length = utf8_char_length(piece.text, begin);
      if (!is_space_at(begin, length)) break;
      begin += length;
    }
    while (right_ && end > begin) {
      size_t start = end - 1;
      while (start > begin && (static_cast<unsigned char>(piece.text[start]) & 0xC0) == 0x80) --start;
      size_t length = utf8_char_length(piece.text, start);
      if (length != end - start || !is_space_at(start, length)) break;
      end = start;
    }
    if (begin != 0 || end != piece.text.size()) piece = piece.slice(begin, end);
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void normalize(Piece& piece) const override {
    for (const auto& step : steps_) step->normalize(piece);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

// ---- pre-tokenizers ---------------------------------------------------------------------------

SplitBehavior parse_behavior(const json& spec, const std::string& source) {
  const std::string name = string_field(spec, "behavior", source, "pre_tokenizer");
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  refuse(source, "pre_tokenizer", spec, "has an unknown behavior '" + name + "'");
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Pattern> pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void split(Piece&& piece, const PieceSink& emit) const override {
    auto parts = pattern_->find_matches(piece.text);
    if (invert_)
      for (auto& part : parts) part.is_match = !part.is_match;
    emit_ranges(std::move(piece), apply_split_behavior(parts, behavior_), emit);
  }

 private:
  std::unique_ptr<Pattern> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex, const std::string& source)
      : add_prefix_space_(add_prefix_space) {
    if (use_regex) regex_ = std::make_unique<Regex>(kGpt2Pattern, source);
  }
  bool is_byte_level() const override { return true; }
  void split(Piece&& piece, const PieceSink& emit) const override {
    if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' ')) {
      PieceBuilder out;
      out.append(" ", piece.span(0, 0));
      out.copy(piece, 0, piece.text.size());
      piece = out.finish();
    }
    if (!regex_) {
      if (!piece.text.empty()) emit(std::move(piece));
      return;
    }
    // Isolated: matches and the gaps between them (only ill-formed bytes fall in gaps). One scratch
    // piece is reused while the pieces map 1:1 to the input: this runs once per word of the text.
    Piece part;
    auto emit_part = [&](size_t begin, size_t end) {
      if (piece.align.empty()) {
        part.text.assign(piece.text, begin, end - begin);
        part.origin = piece.origin + begin;
        part.align.clear();
        part.added_id = -1;
      } else {
        part = piece.slice(begin, end);
      }
      emit(std::move(part));
    };
    size_t previous = 0;
    regex_->for_each_match(piece.text, [&](size_t begin, size_t end) {
      if (begin > previous) emit_part(previous, begin);
      if (end > begin) emit_part(begin, end);
      previous = end;
    });
    if (previous < piece.text.size()) emit_part(previous, piece.text.size());
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class DigitsPreTokenizer : public PreTokenizer {
 public:
  DigitsPreTokenizer(bool individual, const std::string& source)
      : digit_(R"(\p{N})", source), individual_(individual) {}
  void split(Piece&& piece, const PieceSink& emit) const override {
    std::vector<MatchPart> parts;
    size_t previous = 0;
    digit_.for_each_match(piece.text, [&](size_t begin, size_t end) {
      if (begin > previous) parts.push_back({previous, begin, false});
      parts.push_back({begin, end, true});
      previous = end;
    });
    if (previous < piece.text.size() || parts.empty()) parts.push_back({previous, piece.text.size(), false});
    emit_ranges(std::move(piece),
                apply_split_behavior(parts, individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous), emit);
  }

 private:
  Regex digit_;  // Rust's char::is_numeric: general categories Nd, Nl, No
  bool individual_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void split(Piece&& piece, const PieceSink& emit) const override {
    if (piece.text.find(' ') != std::string::npos) {
      PieceBuilder out;
      for (size_t pos = 0; pos < piece.text.size(); ++pos) {
        if (piece.text[pos] == ' ')
          out.append(replacement_, piece.span(pos, pos + 1));
        else
          out.copy(piece, pos, pos + 1);
      }
      piece = out.finish();
    }
    const bool starts_with_replacement = piece.text.compare(0, replacement_.size(), replacement_) == 0;
    if (!starts_with_replacement &&
        (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && piece.input_start() == 0))) {
      PieceBuilder out;
      out.append(replacement_, piece.span(0, 0));
      out.copy(piece, 0, piece.text.size());
      piece = out.finish();
    }
    if (!split_) {
      if (!piece.text.empty()) emit(std::move(piece));
      return;
    }
    std::vector<MatchPart> parts;
    size_t previous = 0;
    for (size_t at = piece.text.find(replacement_); at != std::string::npos;
         at = piece.text.find(replacement_, at + replacement_.size())) {
      if (at > previous) parts.push_back({previous, at, false});
      parts.push_back({at, at + replacement_.size(), true});
      previous = at + replacement_.size();
    }
    if (previous < piece.text.size() || parts.empty()) parts.push_back({previous, piece.text.size(), false});
    emit_ranges(std::move(piece), apply_split_behavior(parts, SplitBehavior::kMergedWithNext), emit);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  bool is_byte_level() const override {
    return std::any_of(steps_.begin(), steps_.end(), [](const auto& step) { return step->is_byte_level(); });
  }
  void split(Piece&& piece, const PieceSink& emit) const override { run(std::move(piece), 0, emit); }

 private:
  void run(Piece&& piece, size_t step, const PieceSink& emit) const {
    if (step == steps_.size()) {
      emit(std::move(piece));
      return;
    }
    steps_[step]->split(std::move(piece), [&](Piece&& part) { run(std::move(part), step + 1, emit); });
  }
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

std::string metaspace_replacement(const json& spec, const std::string& source) {
  std::string replacement = string_field(spec, "replacement", source, "pre_tokenizer/decoder", "\xE2\x96\x81");
  if (replacement.empty() || utf8_char_length(replacement, 0) != replacement.size())
    refuse(source, "Metaspace", spec, "needs a single-character \"replacement\"");
  return replacement;
}

PrependScheme metaspace_scheme(const json& spec, const std::string& source) {
  auto it = spec.find("prepend_scheme");
  if (it == spec.end() || it->is_null())  // older files: add_prefix_space only
    return flag(spec, "add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
  const std::string scheme = it->is_string() ? it->get<std::string>() : std::string();
  if (scheme == "always") return PrependScheme::kAlways;
  if (scheme == "first") return PrependScheme::kFirst;
  if (scheme == "never") return PrependScheme::kNever;
  refuse(source, "pre_tokenizer", spec, "has an unknown prepend_scheme " + it->dump());
}

// ---- decoders ---------------------------------------------------------------------------------

class ByteLevelDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override;
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme) : replacement_(std::move(replacement)), scheme_(scheme) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& token = tokens[i];
      for (size_t pos = 0; pos < token.size();) {
        if (token.compare(pos, replacement_.size(), replacement_) == 0) {
          // As Hugging Face: the first token loses its replacement characters when a prefix was prepended.
          if (!(i == 0 && scheme_ != PrependScheme::kNever)) out += ' ';
          pos += replacement_.size();
        } else {
          out += token[pos++];
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

class ByteFallbackDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (utf8_lossy(pending) == pending)
        out.push_back(pending);
      else
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      pending.clear();
    };
    for (auto& token : tokens) {
      if (auto byte = byte_token(token)) {
        pending += static_cast<char>(*byte);
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens = std::move(out);
  }
  static std::optional<uint8_t> byte_token(const std::string& token) {
    if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return std::nullopt;
    auto hex = [](char c) -> int {
      return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    };
    int high = hex(token[3]), low = hex(token[4]);
    if (high < 0 || low < 0) return std::nullopt;
    return static_cast<uint8_t>(high * 16 + low);
  }
};

class FuseDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const auto& token : tokens) joined += token;
    tokens.assign(1, std::move(joined));
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop) : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& token : tokens) {
      size_t begin = 0, end = token.size();
      for (size_t i = 0; i < start_ && token.compare(begin, content_.size(), content_) == 0 && begin < end; ++i)
        begin += content_.size();
      for (size_t i = 0; i < stop_ && end >= begin + content_.size() &&
                         token.compare(end - content_.size(), content_.size(), content_) == 0;
           ++i)
        end -= content_.size();
      token = token.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(const json& spec, const std::string& source)
      : pattern_(spec.value("pattern", json()), source, "decoder", spec),
        content_(string_field(spec, "content", source, "decoder")) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& token : tokens) {
      Piece piece{token, 0, {}, -1};
      replace_matches(piece, pattern_, content_);
      token = std::move(piece.text);
    }
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

}  // namespace

// GPT-2's byte symbols back to bytes; a token with any other character is taken as its own text
// (added tokens such as "<|endoftext|>" or runs of spaces), as Hugging Face's ByteLevel decoder does.
void ByteLevelDecoder::decode_chain(std::vector<std::string>& tokens) const {
  static const std::vector<int16_t> byte_of_symbol = [] {
    std::vector<int16_t> table(0x144, -1);
    uint32_t next_shifted = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      table[printable ? static_cast<uint32_t>(b) : next_shifted++] = static_cast<int16_t>(b);
    }
    return table;
  }();
  std::string bytes;
  for (const auto& token : tokens) {
    std::string token_bytes;
    bool all_symbols = true;
    for (size_t pos = 0; pos < token.size() && all_symbols;) {
      size_t length = utf8_char_length(token, pos);
      uint32_t code_point = length ? utf8_decode(token, pos, length) : 0xFFFFFFFF;
      if (code_point >= byte_of_symbol.size() || byte_of_symbol[code_point] < 0) {
        all_symbols = false;
        break;
      }
      token_bytes += static_cast<char>(byte_of_symbol[code_point]);
      pos += length;
    }
    bytes += all_symbols ? token_bytes : token;
  }
  tokens.assign(1, utf8_lossy(bytes));
}

std::unique_ptr<Normalizer> make_normalizer(const json& spec, const std::string& source) {
  if (spec.is_null()) return nullptr;
  if (!spec.is_object()) fail_input(source, "\"normalizer\" is neither null nor an object");
  const std::string type = type_of(spec);
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD")
    return std::make_unique<UnicodeNormalizer>(unicode_form(type));
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(string_field(spec, "prepend", source, "normalizer"));
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(spec, source);
  if (type == "Strip") return std::make_unique<StripNormalizer>(flag(spec, "strip_left", true), flag(spec, "strip_right", true));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const auto& step : array_field(spec, "normalizers", source, "normalizer"))
      if (auto made = make_normalizer(step, source)) steps.push_back(std::move(made));
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  refuse(source, "normalizer", spec, "is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip, Sequence)");
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& spec, const std::string& source) {
  if (spec.is_null()) return nullptr;
  if (!spec.is_object()) fail_input(source, "\"pre_tokenizer\" is neither null nor an object");
  const std::string type = type_of(spec);
  if (type == "Split") {
    auto pattern = std::make_unique<Pattern>(spec.value("pattern", json()), source, "pre_tokenizer", spec);
    return std::make_unique<SplitPreTokenizer>(std::move(pattern), parse_behavior(spec, source), flag(spec, "invert", false));
  }
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(flag(spec, "add_prefix_space", true), flag(spec, "use_regex", true), source);
  if (type == "Digits") return std::make_unique<DigitsPreTokenizer>(flag(spec, "individual_digits", false), source);
  if (type == "Metaspace")
    return std::make_unique<MetaspacePreTokenizer>(metaspace_replacement(spec, source), metaspace_scheme(spec, source),
                                                   flag(spec, "split", true));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    const json& list = array_field(spec, "pretokenizers", source, "pre_tokenizer");
    for (size_t i = 0; i < list.size(); ++i) {
      auto made = make_pre_tokenizer(list[i], source);
      if (!made) continue;
      // The model sees ByteLevel's output as raw bytes; a split after it would have to see the
      // byte symbols instead, which this implementation does not reproduce.
      if (!steps.empty() && steps.back()->is_byte_level())
        refuse(source, "pre_tokenizer", list[i], "after a ByteLevel pre-tokenizer is not supported (ByteLevel must come last)");
      steps.push_back(std::move(made));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  refuse(source, "pre_tokenizer", spec, "is not supported (supported: Split, ByteLevel, Digits, Metaspace, Sequence)");
}

std::unique_ptr<Decoder> make_decoder(const json& spec, const std::string& source) {
  if (spec.is_null()) return nullptr;
  if (!spec.is_object()) fail_input(source, "\"decoder\" is neither null nor an object");
  const std::string type = type_of(spec);
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace")
    return std::make_unique<MetaspaceDecoder>(metaspace_replacement(spec, source), metaspace_scheme(spec, source));
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    auto count = [&](const char* key) {
      auto it = spec.find(key);
      if (it == spec.end() || !it->is_number_unsigned()) refuse(source, "decoder", spec, std::string("needs a count \"") + key + "\"");
      return it->get<size_t>();
    };
    return std::make_unique<StripDecoder>(string_field(spec, "content", source, "decoder"), count("start"), count("stop"));
  }
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(spec, source);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const auto& step : array_field(spec, "decoders", source, "decoder"))
      if (auto made = make_decoder(step, source)) steps.push_back(std::move(made));
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  refuse(source, "decoder", spec, "is not supported (supported: ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, Sequence)");
}

}  // namespace rc::hf
