// The one decoder-only transformer behind every ArchitectureSpec: embeddings (+ learned
// positions), blocks of attention and MLP (sequential or parallel residual), final norm, LM head.
// The spec picks each building block; the tensors are looked up once, by role, at construction.
#include <array>
#include <cmath>

#include "architectures.h"
#include "rome_collapse/model/architecture.h"

namespace rc::detail {
namespace {

constexpr size_t kRoles = static_cast<size_t>(TensorRole::Count);
using RoleTable = std::array<const at::Tensor*, kRoles>;  // nullptr: absent

class Decoder final : public CausalLM {
 public:
  Decoder(Checkpoint checkpoint, LoadOptions options)
      : CausalLM(std::move(checkpoint), options), spec_(architecture_spec(config_.arch)) {
    layers_.assign(config_.n_layers, RoleTable{});
    globals_.fill(nullptr);
    for (const TensorSpec& tensor : spec_.tensors) {
      const int64_t count = is_per_layer(tensor) ? config_.n_layers : 1;
      for (int64_t layer = 0; layer < count; ++layer) {
        const std::string name = tensor_name(tensor, layer);
        auto found = weights_.find(name);
        if (found == weights_.end()) continue;  // optional, checked by validate_checkpoint
        if (tensor.conv1d) {  // Conv1D stores [in, out]; hold [out, in] like every other linear
          found->second = found->second.t().contiguous();
          conv1d_names_.push_back(name);
        }
        (is_per_layer(tensor) ? layers_[layer] : globals_)[role_index(tensor.role)] = &found->second;
        if (tensor.role == spec_.rewrite_role) rewrite_names_.push_back(name);
      }
    }
    if (spec_.positions == PositionScheme::Rotary) inv_freq_ = rotary_inverse_frequencies().to(device_);
  }

  std::string rewrite_weight_name(int64_t layer) const override { return rewrite_names_.at(layer); }

 protected:
  at::Tensor embed(const at::Tensor& ids, const at::Tensor& positions) const override {
    at::Tensor x = at::embedding(global(TensorRole::TokenEmbedding), ids);  // [B, T, D]
    if (spec_.positions != PositionScheme::Learned) return x;
    at::Tensor rows = spec_.position_offset ? positions + spec_.position_offset : positions;
    at::Tensor position_embedding = at::embedding(global(TensorRole::PositionEmbedding), rows);  // [T, D] or [B, T, D]
    return x + (positions.dim() == 1 ? position_embedding.unsqueeze(0) : position_embedding);
  }

  at::Tensor block(int64_t layer, const at::Tensor& x, const at::Tensor& positions, const Intervention& intervention,
                   ForwardOutput& out, LayerKV& kv) const override {
    const RoleTable& w = layers_[layer];
    at::Tensor h = norm(x, w, TensorRole::AttnNorm, TensorRole::AttnNormBias);
    at::Tensor attention_out = attention(w, h, positions, kv);
    if (config_.parallel_residual) {
      at::Tensor m = spec_.parallel_kind == ParallelKind::SharedNorm
                         ? h
                         : norm(x, w, TensorRole::MlpNorm, TensorRole::MlpNormBias);
      return x + attention_out + rewrite_with_intervention(layer, mlp_key(w, m), intervention, out);
    }
    at::Tensor residual = x + attention_out;
    at::Tensor m = norm(residual, w, TensorRole::MlpNorm, TensorRole::MlpNormBias);
    return residual + rewrite_with_intervention(layer, mlp_key(w, m), intervention, out);
  }

  at::Tensor final_norm(const at::Tensor& x) const override {
    return norm(x, globals_, TensorRole::FinalNorm, TensorRole::FinalNormBias);
  }

  at::Tensor lm_head(const at::Tensor& x) const override {
    const at::Tensor* head = globals_[role_index(TensorRole::LmHead)];  // tied: the token embedding
    return at::linear(x, head ? *head : global(TensorRole::TokenEmbedding), optional(globals_, TensorRole::LmHeadBias));
  }

 private:
  static size_t role_index(TensorRole role) { return static_cast<size_t>(role); }
  static const at::Tensor& optional(const RoleTable& table, TensorRole role) {
    static const at::Tensor kUndefined;
    const at::Tensor* tensor = table[role_index(role)];
    return tensor ? *tensor : kUndefined;
  }
  static const at::Tensor& required(const RoleTable& table, TensorRole role) { return *table[role_index(role)]; }
  const at::Tensor& global(TensorRole role) const { return required(globals_, role); }

  at::Tensor norm(const at::Tensor& x, const RoleTable& table, TensorRole weight_role, TensorRole bias_role) const {
    if (spec_.norm == NormKind::LayerNorm)
      return at::layer_norm(x, {config_.d_model}, required(table, weight_role), optional(table, bias_role),
                            config_.norm_eps);
    // Normalised in float32, scaled in the input dtype, as transformers' LlamaRMSNorm.
    at::Tensor x32 = x.to(at_least_float(x.scalar_type()));
    at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, true) + config_.norm_eps);
    return required(table, weight_role) * normed.to(x.scalar_type());
  }

  at::Tensor activation(const at::Tensor& x) const {
    switch (config_.activation) {
      case Activation::GeluTanh: return gelu_new(x);
      case Activation::Gelu: return at::gelu(x);
      case Activation::Relu: return at::relu(x);
      case Activation::Silu: return at::silu(x);
    }
    return x;
  }

  // The rewrite module's input ("key"), [B, T, F].
  at::Tensor mlp_key(const RoleTable& w, const at::Tensor& m) const {
    at::Tensor up = at::linear(m, required(w, TensorRole::MlpUp), optional(w, TensorRole::MlpUpBias));
    if (spec_.mlp == MlpKind::Plain) return activation(up);
    return activation(at::linear(m, required(w, TensorRole::MlpGate), optional(w, TensorRole::MlpGateBias))) * up;
  }

  // q [B, H, T, hd], k and v [B, H_kv, T, hd].
  std::array<at::Tensor, 3> project_qkv(const RoleTable& w, const at::Tensor& h) const {
    const int64_t heads = config_.n_heads, kv_heads = config_.n_kv_heads, hd = config_.head_dim;
    if (spec_.qkv == QkvLayout::Separate) {
      auto project = [&](TensorRole weight, TensorRole bias, int64_t n) {
        return split_heads(at::linear(h, required(w, weight), optional(w, bias)), n, hd);
      };
      return {project(TensorRole::Query, TensorRole::QueryBias, heads),
              project(TensorRole::Key, TensorRole::KeyBias, kv_heads),
              project(TensorRole::Value, TensorRole::ValueBias, kv_heads)};
    }
    at::Tensor qkv = at::linear(h, required(w, TensorRole::FusedQKV), optional(w, TensorRole::FusedQKVBias));
    if (spec_.qkv == QkvLayout::FusedBlocks) {  // [q | k | v]
      auto parts = qkv.split_with_sizes({heads * hd, kv_heads * hd, kv_heads * hd}, -1);
      return {split_heads(parts[0], heads, hd), split_heads(parts[1], kv_heads, hd), split_heads(parts[2], kv_heads, hd)};
    }
    // GPT-NeoX: rows [heads][3][head_dim], so each head's q, k and v are adjacent.
    at::Tensor per_head = qkv.view({qkv.size(0), qkv.size(1), heads, 3 * hd}).transpose(1, 2);  // [B, H, T, 3 hd]
    return {per_head.slice(-1, 0, hd), per_head.slice(-1, hd, 2 * hd), per_head.slice(-1, 2 * hd)};
  }

  at::Tensor attention(const RoleTable& w, const at::Tensor& h, const at::Tensor& positions, LayerKV& kv) const {
    auto [q, k, v] = project_qkv(w, h);
    if (spec_.positions == PositionScheme::Rotary) {
      auto [cos, sin] = rotary_tables(positions, h);  // [1 or B, 1, T, rotary_dim]
      q = rotate(q, cos, sin);
      k = rotate(k, cos, sin);
    }
    attach_cache(k, v, kv);
    const int64_t heads = config_.n_heads, kv_heads = config_.n_kv_heads;
    if (kv_heads != heads) {  // each kv head serves heads / kv_heads consecutive query heads
      k = k.repeat_interleave(heads / kv_heads, 1);
      v = v.repeat_interleave(heads / kv_heads, 1);
    }
    const double scale = 1.0 / std::sqrt(double(config_.head_dim));
    at::Tensor attended;
    if (spec_.attention_in_float32) {  // GPT-J computes attention in float32
      const at::ScalarType type = at_least_float(h.scalar_type());
      attended = causal_attention(q.to(type), k.to(type), v.to(type), scale, kv.attention_bias).to(h.scalar_type());
    } else {
      attended = causal_attention(q, k, v, scale, kv.attention_bias);
    }
    return at::linear(merge_heads(attended), required(w, TensorRole::AttnOut), optional(w, TensorRole::AttnOutBias));
  }

  // inv_freq [rotary_dim / 2] in float32 as transformers computes it, with llama3 scaling if configured.
  at::Tensor rotary_inverse_frequencies() const {
    const int64_t dim = config_.rotary_dim;
    at::Tensor inv_freq = 1.0 / at::pow(config_.rope_theta, at::arange(0, dim, 2, at::kLong).to(at::kFloat) / double(dim));
    const RopeScaling& s = config_.rope_scaling;
    if (!s.llama3) return inv_freq;
    // transformers' _compute_llama3_parameters.
    const double old_context = static_cast<double>(s.original_max_positions);
    const double low_freq_wavelen = old_context / s.low_freq_factor, high_freq_wavelen = old_context / s.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
    at::Tensor smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    at::Tensor medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
    return at::where(medium, smoothed, scaled);
  }

  std::pair<at::Tensor, at::Tensor> rotary_tables(const at::Tensor& positions, const at::Tensor& like) const {
    at::Tensor angles = rotary_angles(positions, inv_freq_);  // [T, rd/2] or [B, T, rd/2]
    at::Tensor emb = spec_.rotary_pairing == RotaryPairing::HalfSplit ? at::cat({angles, angles}, -1)
                                                                     : angles.repeat_interleave(2, -1);
    if (emb.dim() == 2) emb = emb.unsqueeze(0);
    return {emb.cos().to(like.scalar_type()).unsqueeze(1), emb.sin().to(like.scalar_type()).unsqueeze(1)};
  }

  // x [B, H, T, hd]: rotates the first rotary_dim dims of each head; the rest pass through.
  at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
    const int64_t rotary_dim = config_.rotary_dim;
    if (rotary_dim == x.size(-1)) return x * cos + rotated(x) * sin;
    at::Tensor rot = x.slice(-1, 0, rotary_dim);
    return at::cat({rot * cos + rotated(rot) * sin, x.slice(-1, rotary_dim)}, -1);
  }

  at::Tensor rotated(const at::Tensor& x) const {
    if (spec_.rotary_pairing == RotaryPairing::HalfSplit) {  // rotate_half
      const int64_t half = x.size(-1) / 2;
      return at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
    }
    at::Tensor even = x.slice(-1, 0, c10::nullopt, 2), odd = x.slice(-1, 1, c10::nullopt, 2);
    return at::stack({-odd, even}, -1).flatten(-2);  // rotate_every_two
  }

  const ArchitectureSpec& spec_;
  std::vector<RoleTable> layers_;  // pointers into weights_ (std::map nodes never move)
  RoleTable globals_;
  std::vector<std::string> rewrite_names_;
  at::Tensor inv_freq_;  // [rotary_dim / 2] float32 on the model's device
};

}  // namespace

std::unique_ptr<CausalLM> make_decoder(Checkpoint checkpoint, LoadOptions options) {
  return std::make_unique<Decoder>(std::move(checkpoint), options);
}

}  // namespace rc::detail
