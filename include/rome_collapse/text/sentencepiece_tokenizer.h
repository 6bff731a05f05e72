#pragma once
// SentencePiece models (.model files: Llama-2's tokenizer.model, llama2.c's tok512.model).
// SentencePiece itself lives in librome_sentencepiece_shim.so, loaded at run time with dlopen (see
// src/text/sentencepiece_tokenizer.cpp): Debian's libsentencepiece exports its own protobuf, which
// clashes with libtorch's in one process, so nothing here links SentencePiece directly.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "rome_collapse/text/tokenizer.h"

namespace rc {

// Conventions that differ between the families using SentencePiece.
struct SentencePieceOptions {
  bool adds_bos_by_default = true;  // Llama: "<s>" first
  bool append_eos = false;          // T5 (Hugging Face's T5Tokenizer): the model's EOS piece "</s>" ends every input
  // T5's spiece.model: no BOS, "</s>" appended.
  static SentencePieceOptions t5() { return {false, true}; }
};

class SentencePieceTokenizer : public Tokenizer {
 public:
  // InputError naming `model_path` when it is missing or not a SentencePiece ModelProto.
  explicit SentencePieceTokenizer(const std::filesystem::path& model_path, SentencePieceOptions options = {});
  ~SentencePieceTokenizer() override;
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  std::vector<int64_t> encode(const std::string& text, bool add_bos) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  bool adds_bos_by_default() const override { return options_.adds_bos_by_default; }
  std::optional<int64_t> appended_eos_id() const override {
    return options_.append_eos ? eos_id_ : std::nullopt;
  }
  std::optional<int64_t> bos_id() const override { return bos_id_; }
  std::optional<int64_t> eos_id() const override { return eos_id_; }
  std::optional<int64_t> unk_id() const override { return unk_id_; }
  int64_t vocab_size() const override { return vocab_size_; }
  std::string describe() const override { return description_; }
  std::vector<std::filesystem::path> source_files() const override { return {source_}; }

 private:
  SentencePieceOptions options_;
  void* processor_ = nullptr;  // the shim's processor handle (released with rome_spm_free)
  std::optional<int64_t> bos_id_;
  std::optional<int64_t> eos_id_;
  std::optional<int64_t> unk_id_;
  int64_t vocab_size_ = 0;
  std::string description_;
  std::filesystem::path source_;
};

}  // namespace rc
