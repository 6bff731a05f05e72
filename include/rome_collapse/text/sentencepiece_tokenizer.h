#pragma once
// SentencePiece models (.model files: Llama-2's tokenizer.model, llama2.c's tok512.model).
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "rome_collapse/text/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace rc {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // InputError naming `model_path` when it is missing or not a SentencePiece ModelProto.
  explicit SentencePieceTokenizer(const std::filesystem::path& model_path);
  ~SentencePieceTokenizer() override;

  std::vector<int64_t> encode(const std::string& text, bool add_bos) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  bool adds_bos_by_default() const override { return true; }
  std::optional<int64_t> bos_id() const override { return bos_id_; }
  std::optional<int64_t> eos_id() const override { return eos_id_; }
  std::optional<int64_t> unk_id() const override { return unk_id_; }
  int64_t vocab_size() const override { return vocab_size_; }
  std::string describe() const override { return description_; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  std::optional<int64_t> bos_id_;
  std::optional<int64_t> eos_id_;
  std::optional<int64_t> unk_id_;
  int64_t vocab_size_ = 0;
  std::string description_;
};

}  // namespace rc
