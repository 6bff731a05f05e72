// rc::append_utf8, the one UTF-8 encoder of the byte-level BPE alphabet, the HF lowercaser and the
// .npy UCS-4 reader: known encodings and every length boundary.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "rome_collapse/util/utf8.h"

namespace rc {
namespace {

std::string encoded(uint32_t code_point) {
  std::string out = "x";  // appends, never replaces
  append_utf8(out, code_point);
  return out.substr(1);
}

TEST(Utf8, EncodesKnownCharacters) {
  EXPECT_EQ(encoded('A'), "A");
  EXPECT_EQ(encoded(0xE9), "\xC3\xA9");          // é
  EXPECT_EQ(encoded(0x120), "\xC4\xA0");         // Ġ, GPT-2's stand-in for a space
  EXPECT_EQ(encoded(0x20AC), "\xE2\x82\xAC");    // €
  EXPECT_EQ(encoded(0x1F600), "\xF0\x9F\x98\x80");  // 😀
  EXPECT_EQ(encoded(0xFFFD), "\xEF\xBF\xBD");    // the replacement character
}

TEST(Utf8, ChangesLengthExactlyAtTheBoundaries) {
  const std::vector<std::pair<uint32_t, std::string>> boundaries = {
      {0x00, std::string(1, '\0')}, {0x7F, "\x7F"},
      {0x80, "\xC2\x80"},           {0x7FF, "\xDF\xBF"},
      {0x800, "\xE0\xA0\x80"},      {0xFFFF, "\xEF\xBF\xBF"},
      {0x10000, "\xF0\x90\x80\x80"}, {0x10FFFF, "\xF4\x8F\xBF\xBF"}};
  for (const auto& [code_point, bytes] : boundaries) EXPECT_EQ(encoded(code_point), bytes) << std::hex << code_point;
}

}  // namespace
}  // namespace rc
