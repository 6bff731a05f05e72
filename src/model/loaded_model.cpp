#include "rome_collapse/model/loaded_model.h"

#include <filesystem>

#include <ATen/ATen.h>

#include "rome_collapse/model/builtin_model.h"
#include "rome_collapse/model/hub_cache.h"
#include "rome_collapse/util/error.h"

namespace rc {

int64_t LoadedModel::pad_id() const {
  if (seq2seq) return seq2seq->config().pad_token_id;
  if (auto eos = tokenizer->eos_id()) return *eos;
  return model->config().eos_token_id.value_or(0);
}

std::string LoadedModel::decode(const std::vector<int64_t>& ids) const {
  const int64_t tokens = tokenizer->vocab_size();
  const int64_t model_tokens = model ? model->config().vocab_size : seq2seq->config().vocab_size;
  for (int64_t id : ids)
    if (id < 0 || id >= tokens)
      throw InputError(model_path + ": the model produced token id " + std::to_string(id) + ", but the tokenizer " +
                       tokenizer_path + " has only " + std::to_string(tokens) + " tokens (the model's vocabulary has " +
                       std::to_string(model_tokens) + "): this tokenizer does not belong to this model");
  return tokenizer->decode(ids);
}

int64_t LoadedModel::layers() const {
  return seq2seq ? seq2seq->config().encoder_layers : model->config().n_layers;
}

std::string LoadedModel::architecture() const {
  return seq2seq ? seq2seq->architecture() : to_string(model->config().arch);
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

namespace {

// The tokenizer at tokenizer_path, else in the model's directory (for a file, the directory holding it).
void attach_tokenizer(LoadedModel& loaded, const std::string& tokenizer_path, std::optional<bool> add_bos,
                      int64_t model_vocab_size) {
  std::filesystem::path tokenizer_location =
      tokenizer_path.empty() ? "" : resolve_model_location(tokenizer_path, {}, "tokenizer");  // a path or hub name
  if (tokenizer_location.empty()) {
    std::filesystem::path model_location(loaded.model_path);
    tokenizer_location = std::filesystem::is_directory(model_location) ? model_location : model_location.parent_path();
    if (tokenizer_location.empty()) tokenizer_location = ".";
  }
  loaded.tokenizer_path = tokenizer_location.string();
  loaded.tokenizer = load_tokenizer(tokenizer_location);
  loaded.add_bos = add_bos.value_or(loaded.tokenizer->adds_bos_by_default());
  if (loaded.tokenizer->vocab_size() > model_vocab_size)
    throw InputError(loaded.tokenizer_path + ": tokenizer has " + std::to_string(loaded.tokenizer->vocab_size()) +
                     " tokens but the model " + loaded.model_path + " has a vocabulary of " +
                     std::to_string(model_vocab_size) + ": its ids would index past the embedding; "
                     "this tokenizer does not belong to this model");
}

}  // namespace

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
  attach_tokenizer(loaded, tokenizer_path, add_bos, loaded.model->config().vocab_size);
  configure_threads(&loaded.model->config());
  return loaded;
}

LoadedModel load_key_model(const std::string& model_path, const std::string& tokenizer_path,
                           std::optional<bool> add_bos, const std::string& device, const std::string& dtype) {
  if (is_builtin_model(model_path)) return load_model(model_path, tokenizer_path, add_bos, device, dtype);
  const std::string location = resolve_model_location(model_path);  // a path, hub-cache folder or hub name
  if (!is_t5_folder(location)) return load_model(location, tokenizer_path, add_bos, device, dtype);
  LoadedModel loaded;
  loaded.model_path = location;
  LoadOptions options;
  options.device = parse_device(device);
  options.dtype = parse_dtype(dtype);
  check_dtype_supported(options.dtype, options.device, dtype);
  loaded.seq2seq = load_seq2seq_lm(location, options);
  attach_tokenizer(loaded, tokenizer_path, add_bos, loaded.seq2seq->config().vocab_size);
  // The thread heuristic looks at the widths only.
  ModelConfig widths;
  widths.d_model = loaded.seq2seq->config().d_model;
  widths.d_ff = loaded.seq2seq->config().d_ff;
  configure_threads(&widths);
  return loaded;
}

}  // namespace rc
