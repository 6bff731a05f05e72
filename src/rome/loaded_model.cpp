#include "rome_collapse/rome/loaded_model.h"

#include <filesystem>

#include <ATen/ATen.h>

#include "rome_collapse/model/hub_cache.h"
#include "rome_collapse/rome/builtin_model.h"
#include "rome_collapse/util/error.h"

namespace rc {

int64_t LoadedModel::pad_id() const {
  if (auto eos = tokenizer->eos_id()) return *eos;
  return model->config().eos_token_id.value_or(0);
}

c10::Device parse_device(const std::string& device) {
  if (device == "cpu") return c10::Device(c10::kCPU);
  if (device == "cuda") {
    if (!at::hasCUDA()) throw InputError("device \"cuda\": this libtorch build has no CUDA or no GPU is visible");
    return c10::Device(c10::kCUDA, 0);
  }
  throw InputError("device \"" + device + "\": expected \"cpu\" or \"cuda\"");
}

// Whether this libtorch can multiply matrices of `dtype` on `device` (libtorch 1.13 has no
// float16 matmul on the CPU); checked once with a 2x2 product.
void check_dtype_supported(at::ScalarType dtype, c10::Device device, const std::string& name) {
  try {
    at::Tensor probe = at::ones({2, 2}, at::TensorOptions().dtype(dtype).device(device));
    (void)at::matmul(probe, probe);
  } catch (const std::exception&) {
    throw InputError("dtype \"" + name + "\" is not supported on " + device.str() +
                     " by this libtorch build (use float32 or bfloat16 on the CPU)");
  }
}

at::ScalarType parse_dtype(const std::string& dtype) {
  if (dtype == "float32") return at::kFloat;
  if (dtype == "float64") return at::kDouble;
  if (dtype == "bfloat16") return at::kBFloat16;
  if (dtype == "float16") return at::kHalf;
  throw InputError("dtype \"" + dtype + "\": expected float32, float64, bfloat16 or float16");
}

LoadedModel load_model(const std::string& model_path, const std::string& tokenizer_path,
                       std::optional<bool> add_bos, const std::string& device, const std::string& dtype) {
  if (is_builtin_model(model_path)) {
    if (!tokenizer_path.empty() && tokenizer_path != model_path)
      throw InputError("model \"" + model_path + "\": builtin models bring their own tokenizer; drop \"tokenizer\"");
    LoadedModel builtin = load_builtin_model(model_path, add_bos, device, dtype);
    configure_threads(&builtin.model->config());
    return builtin;
  }
  LoadedModel loaded;
  loaded.model_path = resolve_model_location(model_path);  // a path, hub-cache folder or cached hub name
  LoadOptions options;
  options.device = parse_device(device);
  options.dtype = parse_dtype(dtype);
  check_dtype_supported(options.dtype, options.device, dtype);
  loaded.model = load_causal_lm(loaded.model_path, options);
  std::filesystem::path tokenizer_location = tokenizer_path.empty() ? "" : resolve_model_location(tokenizer_path, {}, "tokenizer");
  if (tokenizer_location.empty()) {
    std::filesystem::path model_location(loaded.model_path);
    tokenizer_location = std::filesystem::is_directory(model_location) ? model_location : model_location.parent_path();
    if (tokenizer_location.empty()) tokenizer_location = ".";
  }
  loaded.tokenizer_path = tokenizer_location.string();
  loaded.tokenizer = load_tokenizer(tokenizer_location);
  loaded.add_bos = add_bos.value_or(loaded.tokenizer->adds_bos_by_default());
  configure_threads(&loaded.model->config());
  if (loaded.tokenizer->vocab_size() > loaded.model->config().vocab_size)
    throw InputError(loaded.tokenizer_path + ": tokenizer has " + std::to_string(loaded.tokenizer->vocab_size()) +
                     " tokens but the model's vocabulary has " + std::to_string(loaded.model->config().vocab_size));
  return loaded;
}

}  // namespace rc
