#include "rome_collapse/model/builtin_model.h"

#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/text/bpe_tokenizer.h"
#include "rome_collapse/util/error.h"

namespace rc {
namespace {

// Words that become single tokens (with and without a leading space): the demo's requests,
// templates and perplexity sentences. Anything else falls back to byte tokens.
const char* kDemoWords =
    "The the a an of is was in on at to and or for with by from that this it he she they we you I "
    "Leonardo Danielle Darrieux citizen Italy Japan France mother tongue English French language official "
    "Finland Finnish Spanish Windows Phone developed Microsoft Google Apple city capital river country "
    "company Therefore Because think can first time new building located heart government decided game "
    "postponed until weather working this for results study published considered one best cheap many people "
    "like thank everyone who helped will find answer end know also following articles about may have been "
    "would so it's his her their there here known born works as lives lived speaks spoke named called "
    "music football team plays player city Paris Rome Tokyo London Berlin Madrid";

// GPT-2's byte -> printable code point table (OpenAI's bytes_to_unicode).
std::string byte_symbol(int byte) {
  static const std::vector<std::string> table = [] {
    std::vector<int> printable;
    for (int b = '!'; b <= '~'; ++b) printable.push_back(b);
    for (int b = 0xA1; b <= 0xAC; ++b) printable.push_back(b);
    for (int b = 0xAE; b <= 0xFF; ++b) printable.push_back(b);
    std::vector<int> code_point(256, -1);
    for (int b : printable) code_point[b] = b;
    int next = 0;
    for (int b = 0; b < 256; ++b)
      if (code_point[b] < 0) code_point[b] = 256 + next++;
    std::vector<std::string> out(256);
    for (int b = 0; b < 256; ++b) {
      const int cp = code_point[b];
      if (cp < 0x80) out[b] = std::string(1, char(cp));
      else { out[b] += char(0xC0 | (cp >> 6)); out[b] += char(0x80 | (cp & 0x3F)); }
    }
    return out;
  }();
  return table[byte];
}

// Byte-level BPE trained on the word list (each word with and without a leading space): merge the
// most frequent adjacent pair until every word is one token. Training, rather than writing one
// merge chain per word, keeps the merges consistent with how BPE applies them by rank.
nlohmann::json demo_tokenizer_json() {
  nlohmann::json vocab = nlohmann::json::object();
  int64_t next_id = 0;
  for (int b = 0; b < 256; ++b) vocab[byte_symbol(b)] = next_id++;
  std::vector<std::vector<std::string>> words;
  std::istringstream stream(kDemoWords);
  std::set<std::string> seen;
  for (std::string word; stream >> word;)
    for (const std::string& variant : {word, " " + word}) {
      if (!seen.insert(variant).second) continue;
      std::vector<std::string> symbols;
      for (unsigned char c : variant) symbols.push_back(byte_symbol(c));
      words.push_back(symbols);
    }
  nlohmann::json merges = nlohmann::json::array();
  while (true) {
    std::map<std::pair<std::string, std::string>, int> counts;
    for (const auto& symbols : words)
      for (size_t i = 0; i + 1 < symbols.size(); ++i) ++counts[{symbols[i], symbols[i + 1]}];
    if (counts.empty()) break;
    auto best = counts.begin();  // highest count; ties broken by the pair's order (deterministic)
    for (auto it = counts.begin(); it != counts.end(); ++it)
      if (it->second > best->second) best = it;
    const auto [left, right] = best->first;
    merges.push_back(left + " " + right);
    vocab[left + right] = next_id++;
    for (auto& symbols : words) {
      std::vector<std::string> merged;
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
          merged.push_back(left + right);
          ++i;
        } else {
          merged.push_back(symbols[i]);
        }
      }
      symbols = std::move(merged);
    }
  }
  vocab["<|endoftext|>"] = next_id;
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
          {"pre_tokenizer", {{"type", "ByteLevel"}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"added_tokens", {{{"id", next_id}, {"content", "<|endoftext|>"}, {"special", true}}}}};
}

}  // namespace

bool is_builtin_model(const std::string& path) { return path.rfind("builtin:", 0) == 0; }

std::unique_ptr<Tokenizer> builtin_demo_tokenizer() {
  return BpeTokenizer::from_tokenizer_json(demo_tokenizer_json(), "builtin:demo-gpt2");
}

LoadedModel load_builtin_model(const std::string& name, std::optional<bool> add_bos, const std::string& device,
                               const std::string& dtype) {
  if (name != "builtin:demo-gpt2")
    throw InputError("model \"" + name + "\": unknown builtin model (available: builtin:demo-gpt2)");
  LoadedModel loaded;
  loaded.model_path = name;
  loaded.tokenizer_path = name;
  loaded.tokenizer = builtin_demo_tokenizer();
  LoadOptions options;
  options.device = parse_device(device);
  options.dtype = parse_dtype(dtype);
  check_dtype_supported(options.dtype, options.device, dtype);
  ModelConfig config = model_shape("gpt2-tiny", loaded.tokenizer->vocab_size());
  loaded.model = build_causal_lm(random_checkpoint(config, /*seed=*/0), options);
  loaded.add_bos = add_bos.value_or(loaded.tokenizer->adds_bos_by_default());
  return loaded;
}

}  // namespace rc
