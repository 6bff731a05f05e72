// libFuzzer target: the BPE tokenizer readers. rc::BpeTokenizer (GPT-2, the previous reader) and
// rc::HfTokenizer (Hugging Face's tokenizer.json pipeline, and slow vocab.json + merges.txt folders
// with their tokenizer_config.json), from vocab.json + merges.txt and from tokenizer.json.
// Input layout: the first byte selects reader and form (% 4: 0 BpeTokenizer vocab+merges,
// 1 BpeTokenizer tokenizer.json, 2 HfTokenizer vocab+merges, 3 HfTokenizer tokenizer.json); for
// vocab+merges the rest is split at the first "\n#merges\n" (vocab.json before, merges.txt after)
// and, for HfTokenizer, merges.txt again at "\n#config\n" (tokenizer_config.json after).
// A tokenizer that loads must encode, tokenize and decode text without failing.
#include <string>

#include "fuzz_support.h"
#include "rome_collapse/text/bpe_tokenizer.h"
#include "rome_collapse/text/hf_tokenizer.h"

namespace {
void exercise(const rc::Tokenizer& tokenizer) {
  for (const char* text : {"", "Hello world, it's 2024!", " <|endoftext|>caf\xc3\xa9\xff\xfe  \n\t x",
                           "<s> Hello </s>\xe2\x96\x81 caf\x65\xcc\x81 123456 \xf0\x9f\xa4\x97"}) {
    const auto ids = tokenizer.encode(text, true);
    (void)tokenizer.decode(ids);
    (void)tokenizer.tokenize(text, false);
  }
}

// Splits `rest` at the first `separator`: (before, after); after is empty when it is absent.
std::pair<std::string, std::string> cut(const std::string& rest, const std::string& separator) {
  const size_t at = rest.find(separator);
  if (at == std::string::npos) return {rest, std::string()};
  return {rest.substr(0, at), rest.substr(at + separator.size())};
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const int form = data[0] % 4;
  if (form == 1 || form == 3) {
    const auto path = rc::fuzz::write_scratch("tokenizer.json", rest);
    rc::fuzz::expect_clean("fuzz_bpe_tokenizer(tokenizer.json)", [&] {
      if (form == 1)
        exercise(*rc::BpeTokenizer::from_tokenizer_json(path));
      else
        exercise(*rc::HfTokenizer::from_tokenizer_json(path));
    });
    return 0;
  }
  auto [vocab, merges] = cut(rest, "\n#merges\n");
  std::string config;
  if (form == 2) std::tie(merges, config) = cut(merges, "\n#config\n");
  const auto vocab_path = rc::fuzz::write_scratch("vocab.json", vocab);
  const auto merges_path = rc::fuzz::write_scratch("merges.txt", merges);
  std::error_code ec;
  std::filesystem::remove(rc::fuzz::scratch_dir() / "tokenizer_config.json", ec);
  if (!config.empty()) rc::fuzz::write_scratch("tokenizer_config.json", config);
  rc::fuzz::expect_clean("fuzz_bpe_tokenizer(vocab+merges)", [&] {
    if (form == 0)
      exercise(*rc::BpeTokenizer::from_vocab_and_merges(vocab_path, merges_path));
    else
      exercise(*rc::HfTokenizer::from_vocab_and_merges(vocab_path, merges_path));
  });
  return 0;
}
