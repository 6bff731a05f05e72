// GPT-J: parallel attention and MLP on one LayerNorm, partial interleaved rotary embeddings
// (rotate_every_two on the first rotary_dim dims of each head), untied LM head with bias.
#include <cmath>

#include "architectures.h"

namespace rc::detail {
namespace {

class GptJ final : public CausalLM {
 public:
  GptJ(Checkpoint checkpoint, LoadOptions options) : CausalLM(std::move(checkpoint), options) {}

  std::string rewrite_weight_name(int64_t layer) const override { return prefix(layer) + "mlp.fc_out.weight"; }

 protected:
  at::Tensor embed(const at::Tensor& ids, const at::Tensor& positions) const override {
    return at::embedding(weight("transformer.wte.weight"), ids);
  }

  at::Tensor block(int64_t layer, const at::Tensor& x, const at::Tensor& positions, const Intervention& intervention,
                   ForwardOutput& out, LayerKV& kv) const override {
    const std::string p = prefix(layer);
    const int64_t heads = config_.n_heads, head_dim = config_.head_dim;
    at::Tensor h = at::layer_norm(x, {config_.d_model}, weight(p + "ln_1.weight"), weight(p + "ln_1.bias"),
                                  config_.norm_eps);
    // q, k: [B, T, H, hd] while rotating, as transformers does.
    auto as_heads = [&](const at::Tensor& t) { return t.view({t.size(0), t.size(1), heads, head_dim}); };
    at::Tensor q = as_heads(at::linear(h, weight(p + "attn.q_proj.weight")));
    at::Tensor k = as_heads(at::linear(h, weight(p + "attn.k_proj.weight")));
    at::Tensor v = split_heads(at::linear(h, weight(p + "attn.v_proj.weight")), heads, head_dim);
    q = rotate(q, positions).transpose(1, 2);
    k = rotate(k, positions).transpose(1, 2);
    attach_cache(k, v, kv);
    // GPT-J computes attention in float32 and divides by sqrt(head_dim).
    const at::ScalarType attention_type = at_least_float(x.scalar_type());
    at::Tensor attended = causal_attention(q.to(attention_type), k.to(attention_type), v.to(attention_type),
                                           1.0 / std::sqrt(double(head_dim)), kv.attention_bias)
                              .to(x.scalar_type());
    at::Tensor attn_out = at::linear(merge_heads(attended), weight(p + "attn.out_proj.weight"));
    at::Tensor key =
        gelu_new(at::linear(h, weight(p + "mlp.fc_in.weight"), weight(p + "mlp.fc_in.bias")));  // [B, T, F]
    return x + attn_out + rewrite_with_intervention(layer, key, intervention, out);
  }

  at::Tensor final_norm(const at::Tensor& x) const override {
    return at::layer_norm(x, {config_.d_model}, weight("transformer.ln_f.weight"), weight("transformer.ln_f.bias"),
                          config_.norm_eps);
  }

  at::Tensor lm_head(const at::Tensor& x) const override {
    return at::linear(x, weight("lm_head.weight"), optional_weight("lm_head.bias"));
  }

 private:
  static std::string prefix(int64_t layer) { return "transformer.h." + std::to_string(layer) + "."; }

  // x: [B, T, H, hd]; rotates the first rotary_dim dims pairwise (0,1), (2,3), ...
  at::Tensor rotate(const at::Tensor& x, const at::Tensor& positions) const {
    const int64_t rotary_dim = config_.rotary_dim > 0 ? config_.rotary_dim : config_.head_dim;
    auto f32 = at::TensorOptions().dtype(at::kFloat).device(x.device());
    at::Tensor inv_freq =
        1.0 / at::pow(config_.rope_theta, at::arange(0, rotary_dim, 2, f32.dtype(at::kLong)).to(at::kFloat) /
                                              double(rotary_dim));                           // [rd/2]
    at::Tensor angles = rotary_angles(positions, inv_freq);  // [T, rd/2] or [B, T, rd/2]
    if (angles.dim() == 2) angles = angles.unsqueeze(0);
    at::Tensor sin = angles.sin().repeat_interleave(2, -1).unsqueeze(2);  // [1 or B, T, 1, rd]
    at::Tensor cos = angles.cos().repeat_interleave(2, -1).unsqueeze(2);
    at::Tensor rot = x.slice(-1, 0, rotary_dim);
    at::Tensor pass = x.slice(-1, rotary_dim);
    at::Tensor even = rot.slice(-1, 0, c10::nullopt, 2), odd = rot.slice(-1, 1, c10::nullopt, 2);
    at::Tensor rotated_pairs = at::stack({-odd, even}, -1).flatten(-2);  // rotate_every_two
    at::Tensor rotated = (rot * cos.to(x.scalar_type()) + rotated_pairs * sin.to(x.scalar_type()));
    return at::cat({rotated, pass}, -1);
  }
};

}  // namespace

std::unique_ptr<CausalLM> make_gptj(Checkpoint checkpoint, LoadOptions options) {
  return std::make_unique<GptJ>(std::move(checkpoint), options);
}

}  // namespace rc::detail
