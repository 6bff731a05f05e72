// libFuzzer target: rc::BpeTokenizer from vocab.json + merges.txt and from tokenizer.json.
// Input layout: the first byte selects the form (even: vocab.json + merges.txt, odd: tokenizer.json);
// for vocab+merges the rest is split at the first "\n#merges\n" (vocab.json before, merges.txt after).
// A tokenizer that loads must encode and decode text without failing.
#include <string>

#include "fuzz_support.h"
#include "rome_collapse/text/bpe_tokenizer.h"

namespace {
void exercise(const rc::BpeTokenizer& tokenizer) {
  for (const char* text : {"", "Hello world, it's 2024!", " <|endoftext|>caf\xc3\xa9\xff\xfe  \n\t x"}) {
    const auto ids = tokenizer.encode(text, true);
    (void)tokenizer.decode(ids);
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 1) {
    const auto path = rc::fuzz::write_scratch("tokenizer.json", rest);
    rc::fuzz::expect_clean("fuzz_bpe_tokenizer(tokenizer.json)",
                           [&] { exercise(*rc::BpeTokenizer::from_tokenizer_json(path)); });
    return 0;
  }
  const std::string separator = "\n#merges\n";
  const size_t split = rest.find(separator);
  const std::string vocab = split == std::string::npos ? rest : rest.substr(0, split);
  const std::string merges = split == std::string::npos ? std::string() : rest.substr(split + separator.size());
  const auto vocab_path = rc::fuzz::write_scratch("vocab.json", vocab);
  const auto merges_path = rc::fuzz::write_scratch("merges.txt", merges);
  rc::fuzz::expect_clean("fuzz_bpe_tokenizer(vocab+merges)",
                         [&] { exercise(*rc::BpeTokenizer::from_vocab_and_merges(vocab_path, merges_path)); });
  return 0;
}
