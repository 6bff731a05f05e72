// libFuzzer target: rc::read_texts (ME-PPL JSON, JSON lists, JSONL, plain lines) on arbitrary bytes.
#include "fuzz_support.h"
#include "rome_collapse/io/text_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = rc::fuzz::write_scratch("texts.json", data, size);
  rc::fuzz::expect_clean("fuzz_text_file", [&] { (void)rc::read_texts(path); });
  return 0;
}
