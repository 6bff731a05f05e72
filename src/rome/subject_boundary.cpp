#include "rome_collapse/rome/subject_boundary.h"

#include <algorithm>
#include <cctype>
#include <vector>

#include <nlohmann/json.hpp>

#include "rome_collapse/io/request.h"
#include "rome_collapse/util/error.h"

namespace rc {
namespace {

std::string token_list(const Tokenizer& tokenizer, const std::vector<int64_t>& ids, size_t count) {
  std::string out = "[";
  for (size_t i = 0; i < std::min(count, ids.size()); ++i)
    out += (i ? ", " : "") +
           nlohmann::json(tokenizer.decode({ids[i]})).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return out + (ids.size() > count ? ", ...]" : "]");
}

}  // namespace

SubjectBoundaryCheck subject_boundary(const Tokenizer& tokenizer, bool add_bos, const std::string& text_with_placeholder,
                                      const std::string& subject, const std::string& where) {
  const size_t at = text_with_placeholder.find("{}");
  if (at == std::string::npos) throw InputError(where + ": prompt \"" + text_with_placeholder + "\" has no \"{}\"");
  const std::vector<int64_t> through_subject = tokenizer.encode(text_with_placeholder.substr(0, at) + subject, add_bos);
  const std::string full_text = fill_placeholder(text_with_placeholder, subject);
  const std::vector<int64_t> full = tokenizer.encode(full_text, add_bos);
  SubjectBoundaryCheck check;
  if (full.size() >= through_subject.size() && std::equal(through_subject.begin(), through_subject.end(), full.begin()))
    return check;
  const std::string after = text_with_placeholder.substr(at + 2);
  const bool inside_word = !after.empty() && std::isalnum(static_cast<unsigned char>(after[0]));
  check.kind = inside_word ? SubjectBoundary::InsideWord : SubjectBoundary::MergedWithPunctuation;
  const size_t shown = through_subject.size() + 2;
  check.message = where + ": subject \"" + subject + "\" does not end on a token boundary of \"" + full_text +
                  "\": the prompt's tokens are " + token_list(tokenizer, full, shown) +
                  " but the text up to the subject's end is " + token_list(tokenizer, through_subject, shown);
  check.message += inside_word ? "; the subject ends inside a word, so its key would be read at a token the prompt "
                                 "does not contain: give the subject as whole words (e.g. the whole word)"
                               : "; the key is read at the token that holds the subject's end (as ROME does)";
  return check;
}

std::vector<std::string> subject_boundary_warnings(const Tokenizer& tokenizer, bool add_bos,
                                                   const std::vector<EditRequest>& requests,
                                                   const std::vector<nlohmann::json>& ids, const std::string& source) {
  std::vector<std::string> warnings;
  for (size_t i = 0; i < requests.size(); ++i) {
    const std::string id = i < ids.size() ? ids[i].dump() : std::to_string(i);
    const SubjectBoundaryCheck check =
        subject_boundary(tokenizer, add_bos, requests[i].prompt, requests[i].subject, source + ": request " + id);
    if (check.kind == SubjectBoundary::InsideWord) throw InputError(check.message);
    if (check.kind == SubjectBoundary::MergedWithPunctuation) warnings.push_back(check.message);
  }
  return warnings;
}

}  // namespace rc
