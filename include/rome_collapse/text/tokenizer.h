#pragma once
// Tokenizer interface shared by GPT-2 byte-level BPE, SentencePiece and llama2.c tokenizers.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace rc {

// One text split into tokens, for inspection (the `tokenize` command).
struct TokenizedText {
  std::vector<int64_t> ids;
  std::vector<std::string> pieces;  // each token as the vocabulary spells it ("\u0120Paris", "<0x0A>", "<s>")
  // Byte range [begin, end) of each token in the input text; empty when the tokenizer cannot say
  // (SentencePiece, llama2.c). Special tokens added around the text have an empty range at 0 or at the end.
  std::vector<std::pair<size_t, size_t>> offsets;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`; a BOS id is prepended when add_bos (and the tokenizer has one). For a
  // Hugging Face tokenizer.json, add_bos means add_special_tokens: whatever its post-processor adds.
  virtual std::vector<int64_t> encode(const std::string& text, bool add_bos) const = 0;
  // Text of the ids (special tokens such as BOS/EOS are dropped).
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;

  // Convention of the tokenizer family: SentencePiece (Llama) prepends BOS, GPT-2 BPE does not.
  virtual bool adds_bos_by_default() const = 0;
  virtual std::optional<int64_t> bos_id() const = 0;
  virtual std::optional<int64_t> eos_id() const = 0;
  // Id of the unknown-piece token, where the family has one (SentencePiece, llama2.c); ROME drops
  // a leading BOS/UNK from target ids. GPT-2 BPE has none.
  virtual std::optional<int64_t> unk_id() const { return std::nullopt; }
  // The id the family appends to every whole model input, never to pieces of one: T5's "</s>"
  // (Hugging Face's T5Tokenizer). encode() leaves it out, so that token counts of prefixes (the
  // subject's position) are unaffected; whoever builds a model input appends it.
  virtual std::optional<int64_t> appended_eos_id() const { return std::nullopt; }
  virtual int64_t vocab_size() const = 0;
  // Short human-readable description ("gpt2-bpe vocab.json+merges.txt", "sentencepiece tok512.model").
  virtual std::string describe() const = 0;

  // ids, pieces and (where known) byte offsets of `text`; add_special as for encode(). The default
  // spells each piece by decoding its id alone and gives no offsets.
  virtual TokenizedText tokenize(const std::string& text, bool add_special) const;
  // The files the tokenizer was read from (recorded with their sha256 in results' provenance).
  virtual std::vector<std::filesystem::path> source_files() const { return {}; }

  // Convenience: encode with the tokenizer's own BOS convention unless overridden.
  std::vector<int64_t> encode_default(const std::string& text, std::optional<bool> add_bos = std::nullopt) const {
    return encode(text, add_bos.value_or(adds_bos_by_default()));
  }
};

// Loads a tokenizer from a directory, choosing as Hugging Face does: tokenizer.json first, then
// vocab.json+merges.txt (with tokenizer_config.json when present), then tokenizer.model, else a
// llama2.c tokenizer.bin / tok*.bin; or from a file (tokenizer.json, vocab.json, merges.txt,
// *.model, a llama2.c *.bin). A tokenizer.json with a component this reader does not implement is
// refused naming it, unless a tokenizer.model beside it can be used instead (with a warning).
// InputError naming the path when nothing usable is found.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path);

}  // namespace rc
