// The Tokenizer interface's default members (their own file: the fuzz readers link them without
// the factory, which pulls in SentencePiece).
#include "rome_collapse/text/tokenizer.h"

namespace rc {

// Pieces spelled by decoding each id alone; offsets unknown.
TokenizedText Tokenizer::tokenize(const std::string& text, bool add_special) const {
  TokenizedText result;
  result.ids = encode(text, add_special);
  for (int64_t id : result.ids) result.pieces.push_back(decode({id}));
  return result;
}

}  // namespace rc
