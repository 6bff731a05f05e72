#pragma once
// A Hugging Face tokenizer.json read as Hugging Face's `tokenizers` library reads it: added tokens,
// normalizer, pre-tokenizer, BPE model, post-processor and decoder, for the kinds today's causal
// models use (GPT-2/GPT-NeoX/Llama 3/Qwen byte-level BPE, Mistral/Llama's SentencePiece-derived
// BPE with byte fallback). Anything else (WordPiece, Unigram, WordLevel, unknown components) is
// refused with an InputError naming the component and its "type".
// Slow-tokenizer folders (vocab.json + merges.txt, optionally tokenizer_config.json) are converted
// the way transformers' convert_slow_tokenizer does for GPT-2, OPT and Qwen2.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/text/tokenizer.h"

namespace rc {

class HfTokenizer : public Tokenizer {
 public:
  static std::unique_ptr<HfTokenizer> from_tokenizer_json(const std::filesystem::path& tokenizer_json);
  // From a parsed document; `source` names it in errors, `files` are recorded as its sources.
  static std::unique_ptr<HfTokenizer> from_document(const nlohmann::json& document, const std::string& source,
                                                    std::vector<std::filesystem::path> files);
  // vocab.json + merges.txt, with the tokenizer_config.json beside them when there is one:
  // Qwen2Tokenizer (its pattern, NFC, added tokens) or else GPT-2's byte-level BPE; add_bos_token
  // and bos_token (OPT prepends "</s>") and the config's added/special tokens are honoured.
  static std::unique_ptr<HfTokenizer> from_vocab_and_merges(const std::filesystem::path& vocab_json,
                                                            const std::filesystem::path& merges_txt);
  // The tokenizer.json document transformers would build from such a folder (for tests and tools).
  static nlohmann::json convert_slow_files(const std::filesystem::path& vocab_json,
                                           const std::filesystem::path& merges_txt);

  // GPT-2's bytes_to_unicode(): the 256 vocabulary symbols standing for bytes 0..255.
  static nlohmann::json byte_level_alphabet();

  ~HfTokenizer() override;

  std::vector<int64_t> encode(const std::string& text, bool add_special) const override;
  // decode(ids, skip_special_tokens=true).
  std::string decode(const std::vector<int64_t>& ids) const override;
  // Hugging Face's decode(ids, skip_special_tokens). std::out_of_range for ids outside the vocabulary.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const;
  TokenizedText tokenize(const std::string& text, bool add_special) const override;

  // True when the post-processor adds tokens before the text (encode(text, true) starts with bos_id()).
  bool adds_bos_by_default() const override;
  std::optional<int64_t> bos_id() const override;
  std::optional<int64_t> eos_id() const override;
  std::optional<int64_t> unk_id() const override;
  int64_t vocab_size() const override;
  std::string describe() const override;
  std::vector<std::filesystem::path> source_files() const override;

  struct Impl;

 private:
  explicit HfTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace rc
