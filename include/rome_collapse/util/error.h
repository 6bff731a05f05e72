#pragma once
// Errors the tool reports to users. Every error names the file (or config field)
// it is about, so a researcher can fix the input without reading the source.
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

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

// Text from an input as it may appear in a message: cut at a UTF-8 boundary near `max_bytes` with
// "… (N bytes)" appended, so that a megabyte-long name or value never floods a message. Every
// message that prints a value from an input goes through this (or json_excerpt in util/json.h).
std::string excerpt(std::string_view text, size_t max_bytes = 64);

}  // namespace rc
