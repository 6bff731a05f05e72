// libFuzzer target: rc::read_npz / rc::read_second_moment_npz on arbitrary bytes, and rc::parse_npy
// on the raw bytes (first byte 'N' selects the bare .npy reader).
#include <ATen/ATen.h>

#include "fuzz_support.h"
#include "rome_collapse/io/npz.h"
#include "rome_collapse/rome/covariance.h"

namespace {
void use(const rc::NpyArray& array) {
  rc::fuzz::expect_clean("fuzz_npz(tensor)", [&] {
    at::Tensor tensor = array.tensor();
    (void)tensor.numel();
  });
  rc::fuzz::expect_clean("fuzz_npz(string)", [&] { (void)array.string(); });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 0 && data[0] == 'N') {
    const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
    rc::fuzz::expect_clean("fuzz_npz(parse_npy)", [&] { use(rc::parse_npy(bytes, "input.npy")); });
    return 0;
  }
  const auto path = rc::fuzz::write_scratch("input.npz", data, size);
  rc::fuzz::expect_clean("fuzz_npz(read_npz)", [&] {
    for (const auto& [name, array] : rc::read_npz(path)) use(array);
  });
  rc::fuzz::expect_clean("fuzz_npz(second_moment)", [&] { (void)rc::read_second_moment_npz(path); });
  return 0;
}
