#pragma once
// What GPT-2's BPE and the Hugging Face BPE model share (private to the text layer): reading a
// merges.txt, and the merge loop of encoder.py over a (left, right) -> (rank, merged id) table.
#include <cstdint>
#include <filesystem>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace rc::bpe {

struct MergeLine {
  size_t line_number = 0;  // 1-based, for errors
  std::string left, right;
};

// merges.txt: an optional "#version" first line, then "a b" per line, by rank (CRLF and blank lines
// allowed); InputError naming the file and line for a line that is not two symbols and one space.
std::vector<MergeLine> read_merges_txt(const std::filesystem::path& merges_txt);

// (left id << 32 | right id) -> (rank, merged id).
using MergeTable = std::unordered_map<uint64_t, std::pair<int32_t, int64_t>>;
inline uint64_t merge_key(int64_t left, int64_t right) {
  return (static_cast<uint64_t>(left) << 32) | static_cast<uint64_t>(right);
}

// As encoder.py: repeatedly merges every occurrence of the lowest-ranked pair present (the same
// result as the tokenizers crate's priority queue). `id_of(symbol)` is a symbol's token id,
// `join(merged_id, left, right)` the symbol two neighbours become.
template <class Symbol, class IdOf, class Join>
void merge_lowest_ranked(std::vector<Symbol>& symbols, const MergeTable& merges, IdOf id_of, Join join) {
  std::vector<Symbol> merged;
  while (symbols.size() > 1) {
    const std::pair<int32_t, int64_t>* best = nullptr;
    uint64_t best_key = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = merges.find(merge_key(id_of(symbols[i]), id_of(symbols[i + 1])));
      if (it != merges.end() && (!best || it->second.first < best->first)) {
        best = &it->second;
        best_key = it->first;
      }
    }
    if (!best) break;
    merged.clear();
    for (size_t i = 0; i < symbols.size(); ++i) {
      if (i + 1 < symbols.size() && merge_key(id_of(symbols[i]), id_of(symbols[i + 1])) == best_key) {
        merged.push_back(join(best->second, symbols[i], symbols[i + 1]));
        ++i;
      } else {
        merged.push_back(symbols[i]);
      }
    }
    symbols.swap(merged);
  }
}

}  // namespace rc::bpe
