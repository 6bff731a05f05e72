#pragma once
// GPT-2 byte-level BPE (the tokenizer of GPT-2, GPT-J and GPT-NeoX-style models), matching
// OpenAI's encoder.py / Hugging Face's ByteLevel BPE id for id.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/text/tokenizer.h"

namespace rc {

class BpeTokenizer : public Tokenizer {
 public:
  // vocab.json (token -> id) + merges.txt ("#version" header, then one "a b" merge per line, by rank).
  static std::unique_ptr<BpeTokenizer> from_vocab_and_merges(const std::filesystem::path& vocab_json,
                                                             const std::filesystem::path& merges_txt);
  // A Hugging Face tokenizer.json whose model is a byte-level BPE.
  static std::unique_ptr<BpeTokenizer> from_tokenizer_json(const std::filesystem::path& tokenizer_json);
  // Same, from an already parsed document (`source` names it in errors).
  static std::unique_ptr<BpeTokenizer> from_tokenizer_json(const nlohmann::json& document,
                                                           const std::filesystem::path& source);
  // True when a parsed tokenizer.json describes a GPT-2 style byte-level BPE (as opposed to, e.g.,
  // Llama's SentencePiece-derived BPE with byte fallback, which this class cannot reproduce).
  static bool is_byte_level_bpe(const nlohmann::json& document);

  ~BpeTokenizer() override;

  // Special-token strings such as "<|endoftext|>" in `text` are encoded as plain text, as
  // GPT-2's own encoder does.
  std::vector<int64_t> encode(const std::string& text, bool add_bos) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  bool adds_bos_by_default() const override { return false; }
  std::optional<int64_t> bos_id() const override { return end_of_text_id_; }
  std::optional<int64_t> eos_id() const override { return end_of_text_id_; }
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_bytes_.size()); }
  std::string describe() const override { return description_; }
  std::vector<std::filesystem::path> source_files() const override { return sources_; }

 private:
  struct AddedToken {
    std::string content;
    int64_t id = 0;
    bool special = false;
  };
  struct CompiledPattern;

  // `vocab_source` / `merges_source` are the files named in errors about the vocabulary / merges.
  BpeTokenizer(const std::unordered_map<std::string, int64_t>& vocab,
               const std::vector<std::pair<std::string, std::string>>& merges,
               const std::vector<AddedToken>& added_tokens, const std::string& vocab_source,
               const std::string& merges_source, std::string description);

  // Ids of one pre-token (raw bytes), through the cache.
  void append_word_ids(const std::string& word, std::vector<int64_t>& out) const;
  std::vector<int64_t> bpe(const std::string& word) const;

  std::vector<std::string> id_to_bytes_;          // decoded bytes of each id ("" for holes in the id range)
  std::unordered_set<int64_t> dropped_on_decode_;  // special ids decode() leaves out
  int64_t byte_ids_[256] = {};                     // id of the single-byte symbol of each byte value
  // Rank and result of merging the pair (left id, right id), keyed by (left << 32) | right.
  std::unordered_map<uint64_t, std::pair<int32_t, int64_t>> merge_by_pair_;
  std::optional<int64_t> end_of_text_id_;
  std::string description_;
  std::vector<std::filesystem::path> sources_;
  std::unique_ptr<CompiledPattern> pattern_;

  // encode() is const and may be called from several threads; the word cache is its only state.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int64_t>> word_cache_;
};

}  // namespace rc
