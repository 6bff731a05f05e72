// rc::load_tokenizer: picks the tokenizer implementation from the files present.
#include <algorithm>

#include <spdlog/spdlog.h>

#include "rome_collapse/text/hf_tokenizer.h"
#include "rome_collapse/text/llama2c_tokenizer.h"
#include "rome_collapse/text/sentencepiece_tokenizer.h"
#include "rome_collapse/text/tokenizer.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc {
namespace {

namespace fs = std::filesystem;

constexpr const char* kExpectedFiles =
    "expected tokenizer.json, vocab.json+merges.txt, tokenizer.model or a llama2.c tokenizer.bin/tok*.bin";

bool is_file(const fs::path& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// llama2.c tokenizer files in `dir`: tokenizer.bin, else tok*.bin (tok512.bin, tok4096.bin, ...).
// Checkpoints such as stories260K.bin do not match the names.
std::vector<fs::path> llama2c_tokenizer_files(const fs::path& dir) {
  if (is_file(dir / "tokenizer.bin")) return {dir / "tokenizer.bin"};
  std::vector<fs::path> found;
  std::error_code ec;
  for (fs::directory_iterator entry(dir, ec), end; !ec && entry != end; entry.increment(ec)) {
    const std::string name = entry->path().filename().string();
    if (name.size() >= 7 && name.compare(0, 3, "tok") == 0 && entry->path().extension() == ".bin" &&
        is_file(entry->path()))
      found.push_back(entry->path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

// The tokenizers a folder offers after its tokenizer.json, in Hugging Face's order of preference
// (slow files); nullptr when there is none.
std::unique_ptr<Tokenizer> load_slow_tokenizer(const fs::path& dir) {
  const fs::path vocab = dir / "vocab.json", merges = dir / "merges.txt", sentencepiece_model = dir / "tokenizer.model";
  if (is_file(vocab) && is_file(merges)) return HfTokenizer::from_vocab_and_merges(vocab, merges);
  if (is_file(sentencepiece_model)) return std::make_unique<SentencePieceTokenizer>(sentencepiece_model);
  // T5 folders name their SentencePiece model spiece.model (no BOS, "</s>" appended).
  if (is_file(dir / "spiece.model"))
    return std::make_unique<SentencePieceTokenizer>(dir / "spiece.model", SentencePieceOptions::t5());
  // llama2.c model directories hold only a tokenizer .bin beside the checkpoint.
  const auto llama2c_files = llama2c_tokenizer_files(dir);
  if (llama2c_files.size() == 1) return std::make_unique<Llama2cTokenizer>(llama2c_files.front());
  if (llama2c_files.size() > 1) {
    std::string names;
    for (const auto& file : llama2c_files) names += (names.empty() ? "" : ", ") + file.filename().string();
    fail_input(dir.string(), "several llama2.c tokenizer files (" + names + "): name the one to use");
  }
  return nullptr;
}

std::unique_ptr<Tokenizer> load_from_directory(const fs::path& dir) {
  const fs::path tokenizer_json = dir / "tokenizer.json", vocab = dir / "vocab.json", merges = dir / "merges.txt";
  // Hugging Face uses tokenizer.json when the folder has one. One this reader refuses (a component
  // it does not implement) gives way to the folder's slow files, loudly; alone, it is the error.
  if (is_file(tokenizer_json)) {
    try {
      return HfTokenizer::from_tokenizer_json(tokenizer_json);
    } catch (const InputError& refused) {
      auto slow = load_slow_tokenizer(dir);
      if (!slow) throw;
      spdlog::warn("{}; using {} instead", refused.what(), slow->describe());
      return slow;
    }
  }
  if (auto slow = load_slow_tokenizer(dir)) return slow;
  if (is_file(vocab)) fail_input(merges.string(), "not found (vocab.json needs merges.txt beside it)");
  if (is_file(merges)) fail_input(vocab.string(), "not found (merges.txt needs vocab.json beside it)");
  fail_input(dir.string(), std::string("no tokenizer found (") + kExpectedFiles + ")");
}

std::unique_ptr<Tokenizer> load_from_file(const fs::path& file) {
  const std::string name = file.filename().string();
  const std::string extension = file.extension().string();
  const fs::path dir = file.parent_path();
  if (name == "vocab.json" || name == "merges.txt") {
    const fs::path vocab = dir / "vocab.json", merges = dir / "merges.txt";
    if (is_file(vocab) && is_file(merges)) return HfTokenizer::from_vocab_and_merges(vocab, merges);
    if (name == "merges.txt") fail_input(vocab.string(), "not found (merges.txt needs vocab.json beside it)");
    fail_input(merges.string(), "not found (vocab.json needs merges.txt beside it)");
  }
  if (extension == ".json") return HfTokenizer::from_tokenizer_json(file);
  if (name == "spiece.model") return std::make_unique<SentencePieceTokenizer>(file, SentencePieceOptions::t5());
  if (extension == ".model") return std::make_unique<SentencePieceTokenizer>(file);
  // Refuses other .bin files (e.g. a model checkpoint) with an error naming the file.
  if (extension == ".bin") return std::make_unique<Llama2cTokenizer>(file);
  fail_input(file.string(), std::string("not a recognised tokenizer file (") + kExpectedFiles + ")");
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return load_from_directory(path);
  if (!fs::exists(path, ec)) fail_input(path.string(), "no such file or directory");
  return load_from_file(path);
}

}  // namespace rc
