#include <cmath>
#include <mutex>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/util/error.h"

namespace rc {

ModelConfig model_shape(const std::string& name, std::optional<int64_t> vocab_size) {
  ModelConfig config;
  if (name == "gpt2-tiny" || name == "gpt2-small" || name == "gpt2-xl") {
    config.arch = Architecture::GPT2;
    config.model_type = "gpt2";
    config.vocab_size = vocab_size.value_or(50257);
    if (name == "gpt2-tiny") {
      config.d_model = 64, config.n_layers = 4, config.n_heads = 4, config.max_positions = 256;
    } else if (name == "gpt2-small") {
      config.d_model = 768, config.n_layers = 12, config.n_heads = 12, config.max_positions = 1024;
    } else {
      config.d_model = 1600, config.n_layers = 48, config.n_heads = 25, config.max_positions = 1024;
    }
    config.d_ff = 4 * config.d_model;
    config.tie_word_embeddings = true;
  } else if (name == "gptj-6b") {  // EleutherAI/gpt-j-6b's config.json
    config.arch = Architecture::GPTJ;
    config.model_type = "gptj";
    config.vocab_size = vocab_size.value_or(50400);
    config.d_model = 4096, config.n_layers = 28, config.n_heads = 16, config.max_positions = 2048;
    config.d_ff = 4 * config.d_model;
    config.rotary_dim = 64;
    config.tie_word_embeddings = false;
  } else if (name == "llama2-7b") {  // meta-llama/Llama-2-7b-hf's config.json
    config.arch = Architecture::Llama;
    config.model_type = "llama";
    config.vocab_size = vocab_size.value_or(32000);
    config.d_model = 4096, config.n_layers = 32, config.n_heads = 32, config.max_positions = 4096;
    config.d_ff = 11008;
    config.norm_eps = 1e-5;
    config.tie_word_embeddings = false;
  } else {
    throw InputError("unknown model shape \"" + name +
                     "\" (expected gpt2-tiny, gpt2-small, gpt2-xl, gptj-6b or llama2-7b)");
  }
  config.n_kv_heads = config.n_heads;
  config.head_dim = config.d_model / config.n_heads;
  if (config.arch == Architecture::Llama) config.rotary_dim = config.head_dim;
  config.bos_token_id = config.eos_token_id = config.vocab_size - 1;
  return config;
}

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
  auto& t = checkpoint.tensors;
  auto normal = [&](std::vector<int64_t> shape) { return at::normal(0.0, 0.02, shape, generator, on_device); };
  // GPT-2 scales the residual projections by 1/sqrt(2 * n_layer) (transformers' _init_weights).
  const double residual_std = 0.02 / std::sqrt(2.0 * double(config.n_layers));
  auto residual_normal = [&](std::vector<int64_t> shape) {
    return at::normal(0.0, residual_std, shape, generator, on_device);
  };
  const int64_t d = config.d_model, f = config.d_ff, v = config.vocab_size;
  const int64_t q = config.n_heads * config.head_dim, kv = config.n_kv_heads * config.head_dim;
  switch (config.arch) {
    case Architecture::GPT2:
      t["transformer.wte.weight"] = normal({v, d});
      t["transformer.wpe.weight"] = normal({config.max_positions, d});
      for (int64_t i = 0; i < config.n_layers; ++i) {
        const std::string p = "transformer.h." + std::to_string(i) + ".";
        for (const char* norm : {"ln_1", "ln_2"}) {
          t[p + norm + ".weight"] = at::ones({d}, on_device);
          t[p + norm + ".bias"] = at::zeros({d}, on_device);
        }
        t[p + "attn.c_attn.weight"] = normal({d, 3 * d});  // Conv1D: [in, out]
        t[p + "attn.c_attn.bias"] = at::zeros({3 * d}, on_device);
        t[p + "attn.c_proj.weight"] = residual_normal({d, d});
        t[p + "attn.c_proj.bias"] = at::zeros({d}, on_device);
        t[p + "mlp.c_fc.weight"] = normal({d, f});
        t[p + "mlp.c_fc.bias"] = at::zeros({f}, on_device);
        t[p + "mlp.c_proj.weight"] = residual_normal({f, d});
        t[p + "mlp.c_proj.bias"] = at::zeros({d}, on_device);
      }
      t["transformer.ln_f.weight"] = at::ones({d}, on_device);
      t["transformer.ln_f.bias"] = at::zeros({d}, on_device);
      break;
    case Architecture::GPTJ:
      t["transformer.wte.weight"] = normal({v, d});
      for (int64_t i = 0; i < config.n_layers; ++i) {
        const std::string p = "transformer.h." + std::to_string(i) + ".";
        t[p + "ln_1.weight"] = at::ones({d}, on_device);
        t[p + "ln_1.bias"] = at::zeros({d}, on_device);
        for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) t[p + "attn." + proj + ".weight"] = normal({d, d});
        t[p + "mlp.fc_in.weight"] = normal({f, d});
        t[p + "mlp.fc_in.bias"] = at::zeros({f}, on_device);
        t[p + "mlp.fc_out.weight"] = normal({d, f});
        t[p + "mlp.fc_out.bias"] = at::zeros({d}, on_device);
      }
      t["transformer.ln_f.weight"] = at::ones({d}, on_device);
      t["transformer.ln_f.bias"] = at::zeros({d}, on_device);
      t["lm_head.weight"] = normal({v, d});
      t["lm_head.bias"] = at::zeros({v}, on_device);
      break;
    case Architecture::Llama:
      t["model.embed_tokens.weight"] = normal({v, d});
      for (int64_t i = 0; i < config.n_layers; ++i) {
        const std::string p = "model.layers." + std::to_string(i) + ".";
        t[p + "input_layernorm.weight"] = at::ones({d}, on_device);
        t[p + "post_attention_layernorm.weight"] = at::ones({d}, on_device);
        t[p + "self_attn.q_proj.weight"] = normal({q, d});
        t[p + "self_attn.k_proj.weight"] = normal({kv, d});
        t[p + "self_attn.v_proj.weight"] = normal({kv, d});
        t[p + "self_attn.o_proj.weight"] = normal({d, q});
        t[p + "mlp.gate_proj.weight"] = normal({f, d});
        t[p + "mlp.up_proj.weight"] = normal({f, d});
        t[p + "mlp.down_proj.weight"] = normal({d, f});
      }
      t["model.norm.weight"] = at::ones({d}, on_device);
      if (!config.tie_word_embeddings) t["lm_head.weight"] = normal({v, d});
      break;
  }
  return checkpoint;
}

}  // namespace rc
