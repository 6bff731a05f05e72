// GPT-2: learned absolute positions, pre-LayerNorm blocks, fused qkv, gelu_new MLP, tied LM head.
#include <cmath>

#include "architectures.h"

namespace rc::detail {
namespace {

class Gpt2 final : public CausalLM {
 public:
  Gpt2(Checkpoint checkpoint, LoadOptions options) : CausalLM(std::move(checkpoint), options) {
    // Conv1D stores [in, out]; hold [out, in] like every other linear so the math below is uniform.
    for (int64_t i = 0; i < config_.n_layers; ++i) {
      for (const char* module : {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}) {
        std::string name = prefix(i) + module + ".weight";
        weights_.at(name) = weight(name).t().contiguous();
        conv1d_names_.push_back(name);
      }
    }
  }

  std::string rewrite_weight_name(int64_t layer) const override { return prefix(layer) + "mlp.c_proj.weight"; }

 protected:
  at::Tensor embed(const at::Tensor& ids, const at::Tensor& positions) const override {
    at::Tensor position_embedding = at::embedding(weight("transformer.wpe.weight"), positions);  // [T, D] or [B, T, D]
    return at::embedding(weight("transformer.wte.weight"), ids) +
           (positions.dim() == 1 ? position_embedding.unsqueeze(0) : position_embedding);  // [B, T, D]
  }

  at::Tensor block(int64_t layer, const at::Tensor& x, const at::Tensor& positions, const Intervention& intervention,
                   ForwardOutput& out, LayerKV& kv) const override {
    const std::string p = prefix(layer);
    const int64_t heads = config_.n_heads, head_dim = config_.head_dim, d = config_.d_model;
    at::Tensor h = layer_norm(x, p + "ln_1");
    at::Tensor qkv = at::linear(h, weight(p + "attn.c_attn.weight"), weight(p + "attn.c_attn.bias"));  // [B,T,3D]
    auto parts = qkv.split(d, -1);
    at::Tensor k = split_heads(parts[1], heads, head_dim), v = split_heads(parts[2], heads, head_dim);
    attach_cache(k, v, kv);
    at::Tensor attended = causal_attention(split_heads(parts[0], heads, head_dim), k, v,
                                           1.0 / std::sqrt(double(head_dim)), kv.attention_bias);
    at::Tensor residual =
        x + at::linear(merge_heads(attended), weight(p + "attn.c_proj.weight"), weight(p + "attn.c_proj.bias"));
    at::Tensor key = gelu_new(at::linear(layer_norm(residual, p + "ln_2"), weight(p + "mlp.c_fc.weight"),
                                         weight(p + "mlp.c_fc.bias")));  // [B, T, F]
    return residual + rewrite_with_intervention(layer, key, intervention, out);
  }

  at::Tensor final_norm(const at::Tensor& x) const override { return layer_norm(x, "transformer.ln_f"); }

  at::Tensor lm_head(const at::Tensor& x) const override {
    at::Tensor head = optional_weight("lm_head.weight");
    return at::linear(x, head.defined() ? head : weight("transformer.wte.weight"));
  }

 private:
  static std::string prefix(int64_t layer) { return "transformer.h." + std::to_string(layer) + "."; }
  at::Tensor layer_norm(const at::Tensor& x, const std::string& name) const {
    return at::layer_norm(x, {config_.d_model}, weight(name + ".weight"), weight(name + ".bias"), config_.norm_eps);
  }
};

}  // namespace

std::unique_ptr<CausalLM> make_gpt2(Checkpoint checkpoint, LoadOptions options) {
  return std::make_unique<Gpt2>(std::move(checkpoint), options);
}

}  // namespace rc::detail
