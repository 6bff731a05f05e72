#include "rome_collapse/text/sentencepiece_tokenizer.h"

#include <stdexcept>

#include <sentencepiece_processor.h>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc {

SentencePieceTokenizer::SentencePieceTokenizer(const std::filesystem::path& model_path)
    : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()),
      description_("sentencepiece " + model_path.filename().string()) {
  // Reading the bytes ourselves gives the house "file not found" error for a missing file.
  std::string serialized = read_file(model_path);
  auto status = processor_->LoadFromSerializedProto(serialized);
  if (!status.ok())
    fail_input(model_path.string(), "not a SentencePiece model (" + status.ToString() + ")");
  vocab_size_ = processor_->GetPieceSize();
  if (vocab_size_ <= 0) fail_input(model_path.string(), "SentencePiece model has no pieces");
  if (processor_->bos_id() >= 0) bos_id_ = processor_->bos_id();
  if (processor_->eos_id() >= 0) eos_id_ = processor_->eos_id();
  if (processor_->unk_id() >= 0) unk_id_ = processor_->unk_id();
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int64_t> SentencePieceTokenizer::encode(const std::string& text, bool add_bos) const {
  std::vector<int> pieces;
  auto status = processor_->Encode(text, &pieces);
  if (!status.ok()) throw std::runtime_error(description_ + ": encoding failed: " + status.ToString());
  std::vector<int64_t> ids;
  ids.reserve(pieces.size() + 1);
  if (add_bos && bos_id_) ids.push_back(*bos_id_);
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> pieces;
  pieces.reserve(ids.size());
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size_)
      throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " + description_ +
                              " (size " + std::to_string(vocab_size_) + ")");
    if (id == bos_id_ || id == eos_id_) continue;
    pieces.push_back(static_cast<int>(id));
  }
  return processor_->DecodeIds(pieces);
}

}  // namespace rc
