// libFuzzer target: rc::load_hf_config (config.json) on arbitrary bytes.
#include "fuzz_support.h"
#include "rome_collapse/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = rc::fuzz::write_scratch("config.json", data, size);
  rc::fuzz::expect_clean("fuzz_config", [&] {
    rc::ModelConfig config = rc::load_hf_config(path);
    // What the model code derives from the fields must not overflow for any accepted config.
    volatile int64_t derived = config.n_heads * config.head_dim + config.n_kv_heads * config.head_dim;
    (void)derived;
  });
  return 0;
}
