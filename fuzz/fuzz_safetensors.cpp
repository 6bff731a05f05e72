// libFuzzer target: rc::SafetensorsFile::open on arbitrary bytes, then every tensor it accepts.
#include <ATen/ATen.h>

#include "fuzz_support.h"
#include "rome_collapse/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = rc::fuzz::write_scratch("input.safetensors", data, size);
  rc::fuzz::expect_clean("fuzz_safetensors", [&] {
    rc::SafetensorsFile file = rc::SafetensorsFile::open(path);
    for (const auto& [name, entry] : file.entries()) {
      // Touch every byte open() vouched for (reads past the mapping would fault here).
      at::Tensor stored = file.tensor(name, at::kDouble);
      if (stored.numel() != 0) (void)stored.sum().item<double>();
    }
  });
  return 0;
}
