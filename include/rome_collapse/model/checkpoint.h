#pragma once
// Checkpoint loading: Hugging Face directories (model.safetensors or a sharded index) and
// llama2.c files. Tensors come back under Hugging Face names, in Hugging Face layout, in the
// compute dtype. llama2.c weights are renamed and their q/k rows permuted to the HF rotary layout
// (as transformers' convert script does), so one Llama implementation serves both.
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "rome_collapse/model/config.h"

namespace rc {

struct Checkpoint {
  ModelConfig config;
  std::map<std::string, at::Tensor> tensors;  // HF name -> tensor (compute dtype, CPU)
  std::string source;                         // path it was read from
  std::string format;                         // "safetensors", "safetensors-sharded", "llama2c"
  // Keeps memory maps alive while tensors that alias them are in use.
  std::vector<std::shared_ptr<void>> keepalive;
};

// `path`: an HF directory, a model.safetensors file inside one, or a llama2.c .bin file.
// A pickle checkpoint (pytorch_model.bin) is refused with instructions to convert it.
// compute_dtype: at::kFloat (default), at::kDouble, at::kHalf or at::kBFloat16.
Checkpoint load_checkpoint(const std::filesystem::path& path, at::ScalarType compute_dtype);

// Checks that every tensor the architecture needs is present with the shape config.json implies;
// InputError naming the tensor, the expected and the found shape otherwise.
void validate_checkpoint(const Checkpoint& checkpoint);

// NumericError "<file>: tensor '<name>' holds N non-finite values (the first, at flat index i, is …)"
// when a floating-point weight holds a NaN or an Inf; every loader calls it on what it reads.
void check_finite_weight(const at::Tensor& tensor, const std::string& name, const std::string& file);

}  // namespace rc
