#include "rome_collapse/text/llama2c_tokenizer.h"

#include <cstring>
#include <queue>
#include <stdexcept>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc {
namespace {

// run.c starts its best-score search at -1e10, so a pair whose piece scores no higher never merges.
constexpr float kNoMergeScore = -1e10f;

// The file is written by Python's struct.pack with native (little-endian on every llama2.c host) order.
int32_t read_int32(const std::string& bytes, size_t offset) {
  int32_t value;
  std::memcpy(&value, bytes.data() + offset, sizeof value);
  return value;
}

float read_float32(const std::string& bytes, size_t offset) {
  float value;
  std::memcpy(&value, bytes.data() + offset, sizeof value);
  return value;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// Byte value of a "<0xHH>" piece, -1 for any other piece.
int16_t raw_byte_of(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  int high = hex_digit(piece[3]), low = hex_digit(piece[4]);
  if (high < 0 || low < 0) return -1;
  return static_cast<int16_t>(high * 16 + low);
}

std::string byte_piece_name(int byte) {
  static const char* const kHex = "0123456789ABCDEF";
  return std::string("<0x") + kHex[byte >> 4] + kHex[byte & 0xF] + ">";
}

}  // namespace

Llama2cTokenizer::Llama2cTokenizer(const std::filesystem::path& path)
    : description_("llama2c " + path.filename().string()), source_(path) {
  const std::string file = path.string();
  const std::string bytes = read_file(path);
  if (bytes.size() < 4) fail_input(file, "truncated llama2.c tokenizer: no max_token_length header");
  const int32_t max_token_length = read_int32(bytes, 0);
  if (max_token_length <= 0)
    fail_input(file, "not a llama2.c tokenizer: max_token_length is " + std::to_string(max_token_length));

  size_t offset = 4;
  while (offset < bytes.size()) {
    const std::string record = "token " + std::to_string(pieces_.size()) + " at byte " + std::to_string(offset);
    if (bytes.size() - offset < 8) fail_input(file, "truncated llama2.c tokenizer: " + record + " has no score/length");
    const float score = read_float32(bytes, offset);
    const int32_t length = read_int32(bytes, offset + 4);
    offset += 8;
    // The exporter sets max_token_length to the longest piece, so a longer one means this is not
    // a tokenizer (a checkpoint .bin read this way fails here within a few records).
    if (length < 0 || length > max_token_length)
      fail_input(file, "not a llama2.c tokenizer: " + record + " claims " + std::to_string(length) +
                           " bytes (max_token_length is " + std::to_string(max_token_length) + ")");
    if (bytes.size() - offset < static_cast<size_t>(length))
      fail_input(file, "truncated llama2.c tokenizer: " + record + " needs " + std::to_string(length) +
                           " bytes, " + std::to_string(bytes.size() - offset) + " left");
    pieces_.push_back(bytes.substr(offset, static_cast<size_t>(length)));
    scores_.push_back(score);
    offset += static_cast<size_t>(length);
  }

  // Byte fallback (ids byte+3) is only right when the byte pieces sit where llama2.c expects them.
  const int64_t min_vocab = kFirstByteId + 256;
  if (vocab_size() < min_vocab)
    fail_input(file, "not a llama2.c tokenizer: " + std::to_string(pieces_.size()) + " tokens, expected at least " +
                         std::to_string(min_vocab) + " (<unk>, <s>, </s> and 256 byte pieces)");
  raw_byte_.reserve(pieces_.size());
  for (const auto& piece : pieces_) raw_byte_.push_back(raw_byte_of(piece));
  for (int byte = 0; byte < 256; ++byte)
    if (raw_byte_[kFirstByteId + byte] != byte)
      fail_input(file, "not a llama2.c tokenizer: token " + std::to_string(kFirstByteId + byte) + " is \"" +
                           pieces_[kFirstByteId + byte] + "\", expected " + byte_piece_name(byte));

  // run.c looks pieces up by binary search in a sorted copy; with duplicate pieces which id it finds
  // is unspecified, so keep the lowest.
  id_by_piece_.reserve(pieces_.size());
  for (size_t id = 0; id < pieces_.size(); ++id) id_by_piece_.emplace(pieces_[id], static_cast<int64_t>(id));
}

const std::string& Llama2cTokenizer::piece(int64_t id) const {
  if (id < 0 || id >= vocab_size())
    throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " + description_ +
                            " (size " + std::to_string(vocab_size()) + ")");
  return pieces_[static_cast<size_t>(id)];
}

std::optional<int64_t> Llama2cTokenizer::find_piece(const std::string& text) const {
  auto found = id_by_piece_.find(text);
  if (found == id_by_piece_.end()) return std::nullopt;
  return found->second;
}

std::vector<int64_t> Llama2cTokenizer::encode(const std::string& text, bool add_bos) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size() + 2);
  if (add_bos) ids.push_back(kBosId);
  if (!text.empty()) {
    // SentencePiece's add_dummy_prefix. run.c assumes " " is a piece; fall back to its byte if not.
    ids.push_back(find_piece(" ").value_or(kFirstByteId + ' '));
  }

  // One piece per UTF-8 code point, grouped byte by byte as run.c does (at most 4 bytes a group,
  // a stray continuation byte starts its own group), with byte fallback for unknown groups.
  std::string group;
  for (size_t i = 0; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if ((byte & 0xC0) != 0x80) group.clear();
    group += static_cast<char>(byte);
    const bool next_is_continuation = i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
    if (next_is_continuation && group.size() < 4) continue;
    if (auto id = find_piece(group)) {
      ids.push_back(*id);
    } else {
      for (unsigned char group_byte : group) ids.push_back(kFirstByteId + group_byte);
    }
    group.clear();
  }

  // run.c rescans all pairs after every merge and takes the best score, leftmost on ties: O(n^2)
  // lookups. A heap ordered by (score desc, left position asc) over a linked list of symbols makes
  // the same choice at every step (surviving symbols keep their left-to-right order), in O(n log n).
  const size_t count = ids.size();
  if (count < 2) return ids;
  std::vector<int64_t> next(count), prev(count);
  std::vector<bool> alive(count, true);
  for (size_t i = 0; i < count; ++i) {
    next[i] = static_cast<int64_t>(i) + 1;  // == count: none
    prev[i] = static_cast<int64_t>(i) - 1;  // -1: none
  }
  struct Candidate {
    float score;
    int64_t left, right;          // symbol positions
    int64_t left_id, right_id;    // ids when pushed; a mismatch later means the candidate is stale
    int64_t merged_id;
  };
  auto lower_priority = [](const Candidate& a, const Candidate& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(lower_priority)> candidates(lower_priority);
  auto consider = [&](int64_t left, int64_t right) {
    if (left < 0 || right >= static_cast<int64_t>(count)) return;
    auto merged = find_piece(pieces_[static_cast<size_t>(ids[left])] + pieces_[static_cast<size_t>(ids[right])]);
    if (!merged) return;
    const float score = scores_[static_cast<size_t>(*merged)];
    if (!(score > kNoMergeScore)) return;  // also refuses NaN, as run.c's '>' does
    candidates.push({score, left, right, ids[left], ids[right], *merged});
  };
  for (size_t i = 0; i + 1 < count; ++i) consider(static_cast<int64_t>(i), static_cast<int64_t>(i) + 1);

  while (!candidates.empty()) {
    const Candidate best = candidates.top();
    candidates.pop();
    if (!alive[best.left] || !alive[best.right] || next[best.left] != best.right || ids[best.left] != best.left_id ||
        ids[best.right] != best.right_id)
      continue;
    ids[best.left] = best.merged_id;
    alive[best.right] = false;
    next[best.left] = next[best.right];
    if (next[best.left] < static_cast<int64_t>(count)) prev[next[best.left]] = best.left;
    consider(prev[best.left], best.left);
    consider(best.left, next[best.left]);
  }

  std::vector<int64_t> merged_ids;
  merged_ids.reserve(count);
  for (size_t i = 0; i < count; ++i)
    if (alive[i]) merged_ids.push_back(ids[i]);
  return merged_ids;
}

std::string Llama2cTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    const std::string& text_of_id = piece(id);  // range check first, as the other tokenizers do
    if (id == kBosId || id == kEosId) continue;
    if (raw_byte_[static_cast<size_t>(id)] >= 0) {
      text += static_cast<char>(raw_byte_[static_cast<size_t>(id)]);
      continue;
    }
    // SentencePiece's decoder drops the dummy-prefix space of the piece that follows BOS (run.c, PR #89).
    const bool follows_bos = i > 0 && ids[i - 1] == kBosId;
    if (follows_bos && !text_of_id.empty() && text_of_id[0] == ' ')
      text.append(text_of_id, 1, std::string::npos);
    else
      text += text_of_id;
  }
  return text;
}

}  // namespace rc
