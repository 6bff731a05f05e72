// libFuzzer target: rc::Llama2cTokenizer (llama2.c tokenizer .bin) on arbitrary bytes; a file it
// accepts must encode and decode text without failing.
#include "fuzz_support.h"
#include "rome_collapse/text/llama2c_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = rc::fuzz::write_scratch("tokenizer.bin", data, size);
  rc::fuzz::expect_clean("fuzz_llama2c_tokenizer", [&] {
    rc::Llama2cTokenizer tokenizer(path);
    for (const char* text : {"", "Once upon a time, Lily saw a big dog.", "caf\xc3\xa9 \xe2\x80\x94 \xf0\x9f\x98\x80 \xff\x80"}) {
      const auto ids = tokenizer.encode(text, true);
      (void)tokenizer.decode(ids);
    }
  });
  return 0;
}
