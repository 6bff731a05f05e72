#pragma once
// UTF-8 encoding of one code point, for the readers and tokenizers that build text from code points
// (the byte-level BPE alphabet, lowercasing, NumPy's UCS-4 strings).
#include <cstdint>
#include <string>

namespace rc {

// Appends the UTF-8 bytes of `code_point` (1 to 4 bytes). The caller keeps it at or below U+10FFFF;
// surrogates are encoded as they come (the tokenizers' byte tables never produce them).
void append_utf8(std::string& out, uint32_t code_point);

}  // namespace rc
