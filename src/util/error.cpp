#include "rome_collapse/util/error.h"

namespace rc {

void fail_input(const std::string& file, const std::string& what) { throw InputError(file + ": " + what); }

}  // namespace rc
