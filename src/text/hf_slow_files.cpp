// Slow-tokenizer folders (vocab.json + merges.txt [+ tokenizer_config.json]) turned into the
// tokenizer.json that transformers' convert_slow_tokenizer builds: GPT2Converter (GPT-2, OPT) and
// Qwen2Converter, with the special and added tokens the config declares.
#include <unordered_map>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "bpe_merges.h"
#include "rome_collapse/text/hf_tokenizer.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Qwen2Tokenizer's PRETOKENIZE_REGEX: digits one by one, contractions case-insensitive.
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kEndOfText = "<|endoftext|>";
constexpr int64_t kMaxTokenId = 10'000'000;  // as HfTokenizer: beyond, a corrupt file

json parse_json(const fs::path& path) {
  // rc::parse_json: nesting depth and repeated keys bounded as for every JSON reader.
  return rc::parse_json(read_file(path), path.string());
}

// merges.txt: an optional "#version" first line, then "a b" per line, by rank.
json read_merges(const fs::path& merges_txt, const json& vocab) {
  json merges = json::array();
  for (const bpe::MergeLine& merge : bpe::read_merges_txt(merges_txt)) {
    const std::string line = merge.left + " " + merge.right;
    if (!vocab.contains(merge.left) || !vocab.contains(merge.right) || !vocab.contains(merge.left + merge.right))
      fail_input(merges_txt.string(), "line " + std::to_string(merge.line_number) + ": merge '" + line +
                                          "' uses a token missing from vocab.json");
    merges.push_back(line);
  }
  if (merges.empty()) fail_input(merges_txt.string(), "no merges");
  return merges;
}

std::string config_token(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) return value["content"].get<std::string>();
  return "";
}

// The config's added_tokens_decoder, then its named special tokens (with the tokenizer class's
// defaults where the config does not name them) that the vocabulary holds.
json added_tokens_from_config(const json& config, const json& vocab, bool qwen2, const fs::path& config_path) {
  json added = json::array();
  std::set<std::string> contents;
  if (auto decoder = config.find("added_tokens_decoder"); decoder != config.end() && decoder->is_object()) {
    for (const auto& [id_text, entry] : decoder->items()) {
      int64_t id = 0;
      try {
        id = std::stoll(id_text);
      } catch (const std::exception&) {
        fail_input(config_path.string(), "added_tokens_decoder key '" + id_text + "' is not an id");
      }
      std::string content = config_token(entry);
      if (content.empty()) fail_input(config_path.string(), "added_tokens_decoder[" + id_text + "] has no content");
      json token = {{"id", id}, {"content", content}};
      for (const char* flag : {"special", "lstrip", "rstrip", "single_word", "normalized"})
        token[flag] = entry.is_object() && entry.contains(flag) && entry[flag].is_boolean() ? entry[flag].get<bool>() : false;
      added.push_back(token);
      contents.insert(content);
    }
  }
  std::vector<std::string> named;
  for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
    if (config.contains(key)) {
      named.push_back(config_token(config[key]));
    } else if (!(qwen2 && std::string(key) == "bos_token")) {  // GPT2Tokenizer / Qwen2Tokenizer defaults
      named.push_back(kEndOfText);
    }
  }
  if (auto extra = config.find("additional_special_tokens"); extra != config.end() && extra->is_array())
    for (const auto& token : *extra) named.push_back(config_token(token));
  for (const auto& content : named) {
    if (content.empty() || contents.count(content) || !vocab.contains(content)) continue;
    added.push_back({{"id", vocab[content]}, {"content", content}, {"special", true}, {"lstrip", false},
                     {"rstrip", false}, {"single_word", false}, {"normalized", false}});
    contents.insert(content);
  }
  return added;
}

// GPT2Converter: add_bos_token prepends bos_token (OPT's "</s>") through a TemplateProcessing.
json post_processor_from_config(const json& config, const json& vocab, const json& added, const fs::path& config_path) {
  if (!config.value("add_bos_token", false)) return {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  const std::string bos = config.contains("bos_token") ? config_token(config["bos_token"]) : kEndOfText;
  std::optional<int64_t> bos_id;
  for (const auto& token : added)
    if (token["content"] == bos) bos_id = token["id"].get<int64_t>();
  if (!bos_id && vocab.contains(bos) && vocab[bos].is_number_integer()) bos_id = vocab[bos].get<int64_t>();
  if (bos.empty() || !bos_id)
    fail_input(config_path.string(), "add_bos_token is true but bos_token '" + bos + "' is not in the vocabulary");
  return {{"type", "TemplateProcessing"},
          {"single", json::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
          {"pair", json::array()},
          {"special_tokens", {{bos, {{"id", bos}, {"ids", json::array({*bos_id})}, {"tokens", json::array({bos})}}}}}};
}

}  // namespace

json HfTokenizer::convert_slow_files(const fs::path& vocab_json, const fs::path& merges_txt) {
  json vocab = parse_json(vocab_json);
  if (!vocab.is_object()) fail_input(vocab_json.string(), "vocabulary is not a JSON object of token -> id");
  if (vocab.empty()) fail_input(vocab_json.string(), "vocabulary is empty");
  std::unordered_map<int64_t, std::string> token_of_id;  // two tokens with one id would decode as either
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId)
      fail_input(vocab_json.string(), "vocabulary entry '" + excerpt(token) + "' has an out-of-range id " +
                                          json_excerpt(id));
    if (auto [other, inserted] = token_of_id.emplace(id.get<int64_t>(), token); !inserted)
      fail_input(vocab_json.string(), "vocabulary entries '" + excerpt(other->second) + "' and '" + excerpt(token) +
                                          "' have the same id " + std::to_string(id.get<int64_t>()));
  }
  json merges = read_merges(merges_txt, vocab);
  // Every byte must have its symbol, or bytes would vanish from the ids (GPT-2 files have all 256).
  const json byte_vocab = HfTokenizer::byte_level_alphabet();
  for (size_t b = 0; b < byte_vocab.size(); ++b)
    if (!vocab.contains(byte_vocab[b].get<std::string>()))
      fail_input(vocab_json.string(), "vocabulary lacks the symbol for byte " + std::to_string(b) + " ('" +
                                          byte_vocab[b].get<std::string>() + "'); not a byte-level BPE vocabulary");

  const fs::path config_path = vocab_json.parent_path() / "tokenizer_config.json";
  std::error_code ec;
  json config = fs::is_regular_file(config_path, ec) ? parse_json(config_path) : json::object();
  if (!config.is_object()) fail_input(config_path.string(), "not a JSON object");
  const std::string tokenizer_class = config.value("tokenizer_class", std::string());
  const bool qwen2 = tokenizer_class == "Qwen2Tokenizer" || tokenizer_class == "Qwen2TokenizerFast";
  if (!tokenizer_class.empty() && !qwen2 && tokenizer_class != "GPT2Tokenizer" && tokenizer_class != "GPT2TokenizerFast")
    fail_input(config_path.string(), "tokenizer_class '" + tokenizer_class +
                                         "' is not supported with vocab.json+merges.txt (GPT2Tokenizer, Qwen2Tokenizer)");
  const bool add_prefix_space = config.contains("add_prefix_space") && config["add_prefix_space"].is_boolean() &&
                                config["add_prefix_space"].get<bool>();

  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}, {"trim_offsets", !qwen2}, {"use_regex", !qwen2}};
  json document = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}};
  // Without a tokenizer_config.json the folder is GPT-2's own: special-token text stays plain text,
  // as OpenAI's encoder.py treats it.
  document["added_tokens"] = config.empty() ? json::array() : added_tokens_from_config(config, vocab, qwen2, config_path);
  document["normalizer"] = qwen2 ? json{{"type", "NFC"}} : json();
  if (qwen2)
    document["pre_tokenizer"] = {{"type", "Sequence"},
                                 {"pretokenizers", json::array({{{"type", "Split"}, {"pattern", {{"Regex", kQwen2Pattern}}},
                                                                 {"behavior", "Isolated"}, {"invert", false}},
                                                                byte_level})}};
  else
    document["pre_tokenizer"] = byte_level;
  document["post_processor"] = post_processor_from_config(config, vocab, document["added_tokens"], config_path);
  document["decoder"] = byte_level;
  document["model"] = {{"type", "BPE"},          {"dropout", nullptr},         {"unk_token", nullptr},
                       {"fuse_unk", false},      {"byte_fallback", false},     {"ignore_merges", false},
                       {"vocab", std::move(vocab)}, {"merges", std::move(merges)}};
  return document;
}

std::unique_ptr<HfTokenizer> HfTokenizer::from_vocab_and_merges(const fs::path& vocab_json, const fs::path& merges_txt) {
  json document = convert_slow_files(vocab_json, merges_txt);
  std::vector<fs::path> files = {vocab_json, merges_txt};
  std::error_code ec;
  if (fs::is_regular_file(vocab_json.parent_path() / "tokenizer_config.json", ec))
    files.push_back(vocab_json.parent_path() / "tokenizer_config.json");
  return from_document(document, vocab_json.string(), std::move(files));
}

}  // namespace rc
