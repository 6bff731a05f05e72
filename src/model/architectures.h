#pragma once
// Private to src/model: the generic decoder (decoder.cpp, driven by an ArchitectureSpec) and the
// shared layer math.
#include <memory>

#include <ATen/ATen.h>

#include "rome_collapse/model/causal_lm.h"

namespace rc::detail {

std::unique_ptr<CausalLM> make_decoder(Checkpoint checkpoint, LoadOptions options);

// GPT-2's "gelu_new": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). libtorch's fused tanh GELU is
// the same formula in one kernel (forward and backward) instead of seven elementwise ones; it agrees with
// transformers' composed version to float32 rounding (the golden tests hold it there).
inline at::Tensor gelu_new(const at::Tensor& x) { return at::gelu(x, "tanh"); }

// Half-precision activations are normalised and soft-maxed in float32 (as transformers does);
// float32 and float64 keep their own precision.
inline at::ScalarType at_least_float(at::ScalarType type) { return at::promote_types(type, at::kFloat); }

// Scaled dot-product attention. q: [B, H, T, hd], k/v: [B, H, P + T, hd] where the first P
// positions come from a cache (query i sits at position P + i). `bias` ([B or 1, 1, T, P + T],
// float32: 0 where a query may attend, -inf where it may not) is built once per forward pass in
// CausalLM::forward. Scaling and masking are one kernel, bias + scale·(q kᵀ), whose result
// is already float32 for the softmax (float32 as transformers does); the result has q's dtype.
inline at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                   const at::Tensor& bias) {
  at::Tensor scores = at::add(bias, at::matmul(q, k.transpose(-1, -2)), scale);  // [B, H, T, P + T]
  at::Tensor probs = at::softmax(scores.to(at_least_float(scores.scalar_type())), -1).to(q.scalar_type());
  return at::matmul(probs, v);  // [B, H, T, hd]
}

// Rotary angles positions x inv_freq: [T, n] for shared positions [T], [B, T, n] for per-row [B, T].
inline at::Tensor rotary_angles(const at::Tensor& positions, const at::Tensor& inv_freq) {
  return positions.to(at::kFloat).unsqueeze(-1) * inv_freq;
}

// Prepends the cached keys/values and records the result when asked. k, v: [B, H_kv, T, hd].
inline void attach_cache(at::Tensor& k, at::Tensor& v, LayerKV& kv) {
  if (kv.past_keys.defined()) {
    k = at::cat({kv.past_keys.to(k.scalar_type()), k}, 2);
    v = at::cat({kv.past_values.to(v.scalar_type()), v}, 2);
  }
  if (kv.record) {
    kv.keys = k;
    kv.values = v;
  }
}

// [B, T, H*hd] -> [B, H, T, hd]
inline at::Tensor split_heads(const at::Tensor& x, int64_t heads, int64_t head_dim) {
  return x.view({x.size(0), x.size(1), heads, head_dim}).transpose(1, 2);
}
// [B, H, T, hd] -> [B, T, H*hd]
inline at::Tensor merge_heads(const at::Tensor& x) {
  return x.transpose(1, 2).contiguous().view({x.size(0), x.size(2), x.size(1) * x.size(3)});
}

}  // namespace rc::detail
