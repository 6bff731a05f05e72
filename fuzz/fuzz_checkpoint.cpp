// libFuzzer target: rc::load_checkpoint on an arbitrary file beside a small GPT-2 config.json.
// The loader sniffs the content (safetensors header, pickle, zip, else a llama2.c header), so one
// target covers the llama2.c header/loader, safetensors-by-content and the refusals.
#include <ATen/ATen.h>

#include "fuzz_support.h"
#include "rome_collapse/model/checkpoint.h"

namespace {
// The shapes of fuzz/seeds/checkpoint/tiny_gpt2.safetensors (written by fuzz/make_seeds.py).
constexpr char kConfig[] = R"({"model_type": "gpt2", "vocab_size": 8, "n_embd": 4, "n_layer": 1, "n_head": 2,
  "n_positions": 4, "n_inner": 8})";
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto config = rc::fuzz::write_scratch("config.json", kConfig);
  (void)config;
  const auto path = rc::fuzz::write_scratch("model.bin", data, size);
  rc::fuzz::expect_clean("fuzz_checkpoint", [&] {
    rc::Checkpoint checkpoint = rc::load_checkpoint(path, at::kFloat);
    for (const auto& [name, tensor] : checkpoint.tensors) (void)tensor.sum().item<double>();
  });
  return 0;
}
