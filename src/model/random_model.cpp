#include <cmath>
#include <mutex>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "rome_collapse/model/architecture.h"
#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/util/error.h"

namespace rc {

namespace {

// A shape from a real model's config.json (named beside each), with the family's defaults.
ModelConfig shape(Architecture arch, int64_t vocab, int64_t d_model, int64_t layers, int64_t heads, int64_t kv_heads,
                  int64_t d_ff, int64_t max_positions) {
  ModelConfig config = default_config(arch);
  config.vocab_size = vocab, config.d_model = d_model, config.n_layers = layers;
  config.n_heads = heads, config.n_kv_heads = kv_heads, config.head_dim = d_model / heads;
  config.d_ff = d_ff, config.max_positions = max_positions;
  if (architecture_spec(arch).positions == PositionScheme::Rotary) config.rotary_dim = config.head_dim;
  return config;
}

}  // namespace

const std::vector<std::string>& model_shape_names() {
  static const std::vector<std::string> names = {"gpt2-tiny", "gpt2-small", "gpt2-xl",    "gptj-6b",    "llama2-7b",
                                                 "llama3-8b", "qwen2.5-7b", "mistral-7b", "pythia-6.9b"};
  return names;
}

ModelConfig model_shape(const std::string& name, std::optional<int64_t> vocab_size) {
  ModelConfig config;
  if (name == "gpt2-tiny") {
    config = shape(Architecture::GPT2, 50257, 64, 4, 4, 4, 256, 256);
  } else if (name == "gpt2-small") {
    config = shape(Architecture::GPT2, 50257, 768, 12, 12, 12, 3072, 1024);
  } else if (name == "gpt2-xl") {
    config = shape(Architecture::GPT2, 50257, 1600, 48, 25, 25, 6400, 1024);
  } else if (name == "gptj-6b") {  // EleutherAI/gpt-j-6b
    config = shape(Architecture::GPTJ, 50400, 4096, 28, 16, 16, 16384, 2048);
    config.rotary_dim = 64;
  } else if (name == "llama2-7b") {  // meta-llama/Llama-2-7b-hf
    config = shape(Architecture::Llama, 32000, 4096, 32, 32, 32, 11008, 4096);
    config.norm_eps = 1e-5;
  } else if (name == "llama3-8b") {  // meta-llama/Meta-Llama-3-8B
    config = shape(Architecture::Llama, 128256, 4096, 32, 32, 8, 14336, 8192);
    config.norm_eps = 1e-5, config.rope_theta = 500000.0;
  } else if (name == "qwen2.5-7b") {  // Qwen/Qwen2.5-7B (use_sliding_window false)
    config = shape(Architecture::Qwen2, 152064, 3584, 28, 28, 4, 18944, 131072);
    config.norm_eps = 1e-6, config.rope_theta = 1000000.0;
  } else if (name == "mistral-7b") {  // mistralai/Mistral-7B-v0.1
    config = shape(Architecture::Mistral, 32000, 4096, 32, 32, 8, 14336, 32768);
    config.norm_eps = 1e-5, config.sliding_window = 4096;
  } else if (name == "pythia-6.9b") {  // EleutherAI/pythia-6.9b (rotary_pct 0.25, parallel residual)
    config = shape(Architecture::GptNeoX, 50432, 4096, 32, 32, 32, 16384, 2048);
    config.rotary_dim = config.head_dim / 4;
  } else {
    std::string names;
    for (const auto& known : model_shape_names()) names += (names.empty() ? "" : ", ") + known;
    throw InputError("unknown model shape \"" + name + "\" (expected one of " + names + ")");
  }
  if (vocab_size) config.vocab_size = *vocab_size;
  config.bos_token_id = config.eos_token_id = config.vocab_size - 1;
  return config;
}

namespace {

// transformers' _init_weights: unit norms, zero biases, normal(0, 0.02) matrices; GPT-2 scales
// its residual projections by 1/sqrt(2 * n_layer).
at::Tensor initial_tensor(const ArchitectureSpec& spec, const TensorSpec& tensor, const ModelConfig& config,
                          at::Generator& generator, const at::TensorOptions& options) {
  using R = TensorRole;
  const std::vector<int64_t> dims = tensor_shape(tensor, config);
  switch (tensor.role) {
    case R::AttnNorm: case R::MlpNorm: case R::FinalNorm:
      return at::ones(dims, options);
    case R::AttnNormBias: case R::MlpNormBias: case R::FinalNormBias: case R::LmHeadBias: case R::QueryBias:
    case R::KeyBias: case R::ValueBias: case R::FusedQKVBias: case R::AttnOutBias: case R::MlpUpBias:
    case R::MlpGateBias: case R::MlpDownBias:
      return at::zeros(dims, options);
    case R::AttnOut: case R::MlpDown:
      if (spec.scaled_residual_init)
        return at::normal(0.0, 0.02 / std::sqrt(2.0 * double(config.n_layers)), dims, generator, options);
      return at::normal(0.0, 0.02, dims, generator, options);
    default:
      return at::normal(0.0, 0.02, dims, generator, options);
  }
}

}  // namespace

Checkpoint random_checkpoint(const ModelConfig& config, uint64_t seed, c10::Device device) {
  // The CPU draws from its own generator (the demo model's weights never change); another device
  // draws from its seeded default generator there: a 6B-parameter model in seconds, not minutes.
  at::Generator generator;
  if (device.is_cpu()) {
    generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  } else {
    generator = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_current_seed(seed);
  }
  const auto on_device = at::TensorOptions().dtype(at::kFloat).device(device);
  Checkpoint checkpoint;
  checkpoint.config = config;
  checkpoint.source = "random:" + to_string(config.arch) + ":seed" + std::to_string(seed);
  checkpoint.format = "random";
  // Drawn in the spec's order: global tensors before the layers, layer by layer, then the rest.
  const ArchitectureSpec& spec = architecture_spec(config.arch);
  const auto& tensors = spec.tensors;
  size_t first = 0, last = tensors.size();
  while (first < tensors.size() && !is_per_layer(tensors[first])) ++first;
  while (last > first && !is_per_layer(tensors[last - 1])) --last;
  auto put = [&](const TensorSpec& tensor, int64_t layer) {
    if (tensor_present(tensor, config))
      checkpoint.tensors[tensor_name(tensor, layer)] = initial_tensor(spec, tensor, config, generator, on_device);
  };
  for (size_t i = 0; i < first; ++i) put(tensors[i], 0);
  for (int64_t layer = 0; layer < config.n_layers; ++layer)
    for (size_t i = first; i < last; ++i) put(tensors[i], layer);
  for (size_t i = last; i < tensors.size(); ++i) put(tensors[i], 0);
  return checkpoint;
}

}  // namespace rc
