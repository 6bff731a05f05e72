#pragma once
// Shared helpers of the libFuzzer targets (fuzz/fuzz_*.cpp).
//
// The contract every target checks: for any bytes, the reader either succeeds or throws
// rc::InputError (or rc::NumericError for a checkpoint with NaN/Inf weights). Any other exception
// (std::out_of_range, nlohmann::json errors, c10::Error, std::bad_alloc from an absurd declared
// size), a crash or a sanitizer report is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>

#include "rome_collapse/util/error.h"

namespace rc::fuzz {

// A private directory for this fuzzing process (files are rewritten on every input).
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::filesystem::path path = std::filesystem::path(base && *base ? base : "/tmp") /
                                 ("rome-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
    return path;
  }();
  return dir;
}

inline std::filesystem::path write_scratch(const std::string& name, const uint8_t* data, size_t size) {
  std::filesystem::path path = scratch_dir() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz harness: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

inline std::filesystem::path write_scratch(const std::string& name, const std::string& bytes) {
  return write_scratch(name, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

// Runs `body`; rc::InputError is the expected answer to bad input, anything else aborts (a finding).
template <class Body>
void expect_clean(const char* target, Body&& body) {
  try {
    body();
  } catch (const rc::InputError&) {
  } catch (const rc::NumericError&) {  // non-finite weights, refused at load (exit 3)
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: unexpected exception (not rc::InputError): %s\n", target, e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "%s: unexpected non-std exception\n", target);
    std::abort();
  }
}

}  // namespace rc::fuzz
