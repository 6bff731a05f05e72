#include "rome_collapse/util/fields.h"

#include <algorithm>

namespace rc {
namespace {

// Edit distance with insertions, deletions, substitutions and swaps of neighbours ("modle" is 1
// from "model"): the optimal-string-alignment variant of Damerau-Levenshtein.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

}  // namespace

std::string closest_name(const std::string& name, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(2, name.size() / 3) + 1;  // at most this minus one edits
  for (const auto& candidate : candidates) {
    const size_t distance = edit_distance(name, candidate);
    if (distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best;
}

std::string unknown_fields_message(const std::string& where, const std::vector<std::string>& unknown,
                                   const std::vector<std::string>& known) {
  std::string message = where + (unknown.size() == 1 ? ": unknown field " : ": unknown fields: ");
  for (size_t i = 0; i < unknown.size(); ++i) {
    if (i) message += ", ";
    message += "\"" + unknown[i] + "\"";
    const std::string suggestion = closest_name(unknown[i], known);
    if (!suggestion.empty()) message += " (did you mean \"" + suggestion + "\"?)";
  }
  return message;
}

}  // namespace rc
