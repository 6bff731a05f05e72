#pragma once
// Errors the tool reports to users. Every error names the file (or config field)
// it is about, so a researcher can fix the input without reading the source.
#include <stdexcept>
#include <string>

namespace rc {

// Bad input: a file, a field or a value a user supplied. The CLI maps it to exit 2.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Numerical failure during a computation (NaN/Inf, singular matrix). The CLI maps it to exit 3.
class NumericError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "<file>: <what>" — the house format for input errors.
[[noreturn]] void fail_input(const std::string& file, const std::string& what);

}  // namespace rc
