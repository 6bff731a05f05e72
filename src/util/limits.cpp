#include "rome_collapse/util/limits.h"

#include "rome_collapse/util/error.h"

namespace rc {

void check_text_size(const std::string& text, const std::string& where) {
  if (text.size() > limits::kMaxTextBytes)
    throw InputError(where + ": " + std::to_string(text.size()) + " bytes, above the bound of " +
                     std::to_string(limits::kMaxTextBytes) + " bytes (\"" + excerpt(text, 40) + "\")");
}

}  // namespace rc
