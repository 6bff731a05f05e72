// Llama: RMSNorm, rotary embeddings on the full head (rotate_half layout), grouped-query
// attention, SwiGLU MLP. llama2.c checkpoints arrive already permuted to this layout.
#include <cmath>

#include "architectures.h"

namespace rc::detail {
namespace {

class Llama final : public CausalLM {
 public:
  Llama(Checkpoint checkpoint, LoadOptions options) : CausalLM(std::move(checkpoint), options) {}

  std::string rewrite_weight_name(int64_t layer) const override { return prefix(layer) + "mlp.down_proj.weight"; }

 protected:
  at::Tensor embed(const at::Tensor& ids, const at::Tensor& positions) const override {
    return at::embedding(weight("model.embed_tokens.weight"), ids);
  }

  at::Tensor block(int64_t layer, const at::Tensor& x, const at::Tensor& positions, const Intervention& intervention,
                   ForwardOutput& out, LayerKV& kv) const override {
    const std::string p = prefix(layer);
    const int64_t heads = config_.n_heads, kv_heads = config_.n_kv_heads, head_dim = config_.head_dim;
    at::Tensor h = rms_norm(x, p + "input_layernorm.weight");
    at::Tensor q = split_heads(at::linear(h, weight(p + "self_attn.q_proj.weight")), heads, head_dim);
    at::Tensor k = split_heads(at::linear(h, weight(p + "self_attn.k_proj.weight")), kv_heads, head_dim);
    at::Tensor v = split_heads(at::linear(h, weight(p + "self_attn.v_proj.weight")), kv_heads, head_dim);
    auto [cos, sin] = rotary_tables(positions, x);  // [1, 1, T, hd] or [B, 1, T, hd]
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
    attach_cache(k, v, kv);
    if (kv_heads != heads) {  // each kv head serves heads / kv_heads consecutive query heads
      k = k.repeat_interleave(heads / kv_heads, 1);
      v = v.repeat_interleave(heads / kv_heads, 1);
    }
    at::Tensor attended = causal_attention(q, k, v, 1.0 / std::sqrt(double(head_dim)), kv.attention_bias);
    at::Tensor residual = x + at::linear(merge_heads(attended), weight(p + "self_attn.o_proj.weight"));
    at::Tensor m = rms_norm(residual, p + "post_attention_layernorm.weight");
    at::Tensor key = at::silu(at::linear(m, weight(p + "mlp.gate_proj.weight"))) *
                     at::linear(m, weight(p + "mlp.up_proj.weight"));  // [B, T, F]
    return residual + rewrite_with_intervention(layer, key, intervention, out);
  }

  at::Tensor final_norm(const at::Tensor& x) const override { return rms_norm(x, "model.norm.weight"); }

  at::Tensor lm_head(const at::Tensor& x) const override {
    at::Tensor head = optional_weight("lm_head.weight");
    return at::linear(x, head.defined() ? head : weight("model.embed_tokens.weight"));
  }

 private:
  static std::string prefix(int64_t layer) { return "model.layers." + std::to_string(layer) + "."; }

  // Normalised in float32, scaled in the input dtype, as transformers' LlamaRMSNorm.
  at::Tensor rms_norm(const at::Tensor& x, const std::string& name) const {
    at::Tensor x32 = x.to(at_least_float(x.scalar_type()));
    at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, true) + config_.norm_eps);
    return weight(name) * normed.to(x.scalar_type());
  }

  static at::Tensor rotate_half(const at::Tensor& x) {
    const int64_t half = x.size(-1) / 2;
    return at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
  }

  std::pair<at::Tensor, at::Tensor> rotary_tables(const at::Tensor& positions, const at::Tensor& like) const {
    const int64_t dim = config_.head_dim;
    auto opts = at::TensorOptions().device(like.device());
    at::Tensor inv_freq =
        1.0 / at::pow(config_.rope_theta, at::arange(0, dim, 2, opts.dtype(at::kLong)).to(at::kFloat) / double(dim));
    at::Tensor freqs = rotary_angles(positions, inv_freq);  // [T, hd/2] or [B, T, hd/2]
    at::Tensor emb = at::cat({freqs, freqs}, -1);           // [T, hd] or [B, T, hd]
    if (emb.dim() == 2) emb = emb.unsqueeze(0);
    return {emb.cos().to(like.scalar_type()).unsqueeze(1), emb.sin().to(like.scalar_type()).unsqueeze(1)};
  }
};

}  // namespace

std::unique_ptr<CausalLM> make_llama(Checkpoint checkpoint, LoadOptions options) {
  return std::make_unique<Llama>(std::move(checkpoint), options);
}

}  // namespace rc::detail
