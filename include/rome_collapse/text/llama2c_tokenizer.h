#pragma once
// llama2.c's tokenizer.bin / tok*.bin files: a SentencePiece vocabulary exported by llama2.c's
// tokenizer.py, encoded and decoded exactly as llama2.c's run.c does.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "rome_collapse/text/tokenizer.h"

namespace rc {

class Llama2cTokenizer : public Tokenizer {
 public:
  // File layout: int32 max_token_length, then one record per token until EOF: float32 score,
  // int32 length, `length` bytes of piece text. Ids 0..2 are <unk>, BOS, EOS; 3..258 are the
  // byte-fallback pieces <0x00>..<0xFF>. InputError naming `path` when it is missing, truncated
  // or not in that layout (e.g. a model checkpoint .bin).
  explicit Llama2cTokenizer(const std::filesystem::path& path);

  // run.c's encode(): optional BOS, a dummy-prefix " " when text is non-empty, one piece per
  // UTF-8 code point (bytes as ids byte+3 when the code point is no piece), then greedy merges of
  // the adjacent pair whose concatenation is the highest-scoring piece (leftmost on ties).
  std::vector<int64_t> encode(const std::string& text, bool add_bos) const override;
  // run.c's decode(): BOS/EOS dropped, a piece right after BOS loses its leading space,
  // <0xHH> pieces become the raw byte. std::out_of_range for ids outside the vocabulary.
  std::string decode(const std::vector<int64_t>& ids) const override;
  bool adds_bos_by_default() const override { return true; }
  std::optional<int64_t> bos_id() const override { return kBosId; }
  std::optional<int64_t> eos_id() const override { return kEosId; }
  std::optional<int64_t> unk_id() const override { return kUnkId; }
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  std::string describe() const override { return description_; }
  std::vector<std::filesystem::path> source_files() const override { return {source_}; }

  // Piece text of `id` as stored in the file (" " for SentencePiece's U+2581); out_of_range if absent.
  const std::string& piece(int64_t id) const;

  // Fixed by llama2.c's export (run.c hard-codes them too).
  static constexpr int64_t kUnkId = 0;
  static constexpr int64_t kBosId = 1;
  static constexpr int64_t kEosId = 2;
  static constexpr int64_t kFirstByteId = 3;  // id of <0x00>; byte b is id b + 3

 private:
  std::optional<int64_t> find_piece(const std::string& text) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int16_t> raw_byte_;  // byte value of each <0xHH> piece, -1 for the others
  std::unordered_map<std::string, int64_t> id_by_piece_;
  std::string description_;
  std::filesystem::path source_;
};

}  // namespace rc
