#pragma once
// Whether the subject ends on a token boundary of the prompt. The key is read at the last token of
// encode(text before the subject + subject); when the whole prompt tokenises differently there,
// that token is not in the prompt:
//   - inside a word ("Leonard" in "Leonardo is"): the edit's numbers would come from tokenisation
//     alone (a collapse-like denominator), so it is refused;
//   - merged with punctuation ("F.C." + "," -> ".,"): the key sits on the token holding the
//     subject's end, as in ROME's own code; allowed with a warning that shows the tokens.
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/io/request.h"
#include "rome_collapse/text/tokenizer.h"

namespace rc {

enum class SubjectBoundary { Exact, MergedWithPunctuation, InsideWord };

struct SubjectBoundaryCheck {
  SubjectBoundary kind = SubjectBoundary::Exact;
  std::string message;  // "<where>: subject ... (tokens)"; empty when Exact
};

SubjectBoundaryCheck subject_boundary(const Tokenizer& tokenizer, bool add_bos, const std::string& text_with_placeholder,
                                      const std::string& subject, const std::string& where);

// The messages of the requests whose subject merges with punctuation (InputError for the first
// that ends inside a word); `ids` name the requests ("<source>: request <id>").
std::vector<std::string> subject_boundary_warnings(const Tokenizer& tokenizer, bool add_bos,
                                                   const std::vector<EditRequest>& requests,
                                                   const std::vector<nlohmann::json>& ids, const std::string& source);

}  // namespace rc
