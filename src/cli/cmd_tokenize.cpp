// `rome-collapse tokenize`: how a text is split (ids, pieces, byte offsets) and where a subject's
// tokens are, the first thing to check when a subject position looks wrong. With --bench, the
// tokenizer's speed on the text against the GPT-2 BPE reader this project had before (same ids).
#include <algorithm>
#include <chrono>
#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "rome_collapse/rome/keys.h"
#include "rome_collapse/text/bpe_tokenizer.h"
#include "rome_collapse/text/tokenizer.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

fs::path tokenizer_location(const TokenizeArgs& args) {
  if (!args.tokenizer.empty()) return args.tokenizer;
  if (args.model.empty()) throw InputError("tokenize: give --model DIR or --tokenizer PATH");
  std::error_code ec;
  fs::path model = args.model;
  if (fs::is_directory(model, ec)) return model;
  return model.parent_path().empty() ? fs::path(".") : model.parent_path();  // a llama2.c checkpoint file
}

std::string input_text(const TokenizeArgs& args) {
  if (args.text && !args.file.empty()) throw InputError("tokenize: give only one of --text and --file");
  if (!args.text && args.file.empty()) throw InputError("tokenize: give --text T or --file F");
  return args.text ? *args.text : read_file(args.file);
}

// The tokens covering the subject's first occurrence, by offsets where the tokenizer gives them, and
// the index ROME's subject_last_index computes (encode(prefix + subject)), so that the two can be compared.
json subject_span(const Tokenizer& tokenizer, const TokenizedText& split, const std::string& text,
                  const std::string& subject, bool add_special) {
  const size_t at = text.find(subject);
  if (subject.empty() || at == std::string::npos) throw InputError("tokenize: --subject \"" + subject + "\" is not in the text");
  const size_t end = at + subject.size();
  json span = {{"text", subject}, {"byte_begin", at}, {"byte_end", end}};
  if (!split.offsets.empty()) {
    std::optional<size_t> first, last;
    for (size_t i = 0; i < split.offsets.size(); ++i) {
      const auto& [begin, stop] = split.offsets[i];
      if (stop <= begin || stop <= at || begin >= end) continue;  // empty (added specials) or outside
      if (!first) first = i;
      last = i;
    }
    span["first_token"] = first ? json(*first) : json(nullptr);
    span["last_token"] = last ? json(*last) : json(nullptr);
    span["starts_inside_token"] = first && split.offsets[*first].first < at;
    span["ends_inside_token"] = last && split.offsets[*last].second > end;
  }
  std::string with_placeholder = text.substr(0, at) + "{}" + text.substr(end);
  span["rome_last_index"] = subject_last_index(tokenizer, add_special, with_placeholder, subject);
  return span;
}

json source_files_json(const Tokenizer& tokenizer) {
  json files = json::array();
  for (const auto& file : tokenizer.source_files()) files.push_back({{"path", file.string()}, {"sha256", sha256_file(file)}});
  return files;
}

// Seconds of one encode.
double time_encode(const Tokenizer& tokenizer, const std::string& text, std::vector<int64_t>& ids) {
  auto start = std::chrono::steady_clock::now();
  ids = tokenizer.encode(text, false);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The previous GPT-2 reader on the same files, where they are GPT-2 files (the speed baseline).
std::unique_ptr<Tokenizer> previous_gpt2_reader(const fs::path& location) {
  std::error_code ec;
  const fs::path dir = fs::is_directory(location, ec) ? location : location.parent_path();
  if (fs::is_regular_file(dir / "vocab.json", ec) && fs::is_regular_file(dir / "merges.txt", ec) &&
      !fs::exists(dir / "tokenizer_config.json", ec))
    return BpeTokenizer::from_vocab_and_merges(dir / "vocab.json", dir / "merges.txt");
  return nullptr;
}

json timing(const Tokenizer& tokenizer, double seconds, size_t bytes) {
  return {{"reader", tokenizer.describe()}, {"seconds", seconds}, {"mb_per_s", static_cast<double>(bytes) / seconds / 1e6}};
}

// Fastest of `repeats` encodes of each reader, the readers alternating so that both see the same
// machine load; one warm-up encode each first, so both run with their word caches filled.
json bench(const Tokenizer& tokenizer, const fs::path& location, const std::string& text, int64_t repeats) {
  std::vector<int64_t> ids, previous_ids;
  auto previous = previous_gpt2_reader(location);
  if (previous) previous->encode(text, false);
  tokenizer.encode(text, false);
  double best = 1e300, previous_best = 1e300;
  for (int64_t r = 0; r < repeats; ++r) {
    if (previous) previous_best = std::min(previous_best, time_encode(*previous, text, previous_ids));
    best = std::min(best, time_encode(tokenizer, text, ids));
  }
  json result = {{"text_bytes", text.size()}, {"repeats", repeats}, {"tokens", ids.size()},
                 {"tokenizer", timing(tokenizer, best, text.size())}};
  if (previous) {
    result["previous_gpt2_bpe"] = timing(*previous, previous_best, text.size());
    result["same_ids"] = ids == previous_ids;
    result["speedup"] = previous_best / best;
    if (ids != previous_ids) throw std::runtime_error("tokenize --bench: the readers disagree on the ids");
  }
  return result;
}

}  // namespace

int run_tokenize(const TokenizeArgs& args) {
  const fs::path location = tokenizer_location(args);
  const std::string text = input_text(args);
  auto tokenizer = load_tokenizer(location);
  json out = {{"tokenizer", tokenizer->describe()}, {"path", location.string()}, {"files", source_files_json(*tokenizer)}};
  if (args.bench_repeats > 0) {
    out["bench"] = bench(*tokenizer, location, text, args.bench_repeats);
    std::cout << out.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return kOk;
  }
  TokenizedText split = tokenizer->tokenize(text, args.special);
  out["add_special"] = args.special;
  out["count"] = split.ids.size();
  out["ids"] = split.ids;
  out["pieces"] = split.pieces;
  if (split.offsets.empty()) {
    out["offsets"] = nullptr;
  } else {
    json offsets = json::array();
    for (const auto& [begin, end] : split.offsets) offsets.push_back({begin, end});
    out["offsets"] = std::move(offsets);
  }
  if (args.subject) out["subject"] = subject_span(*tokenizer, split, text, *args.subject, args.special);
  std::cout << out.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
  return kOk;
}

}  // namespace rc::cli
