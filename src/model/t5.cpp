// T5 (v1.0, v1.1, Flan-T5), following transformers' modeling_t5.py (eager path): RMS layer norm
// without mean or bias (variance in float32), attention without 1/sqrt(d) scaling, a relative
// position bias held by block 0 of each stack and shared by all its layers (bidirectional buckets
// in the encoder, causal ones in the decoder), cross-attention without position bias, and for
// tied embeddings the decoder output scaled by d_model^-0.5 before the shared head.
#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/io/safetensors.h"
#include "rome_collapse/model/checkpoint.h"
#include "rome_collapse/model/seq2seq_lm.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kMaxDimension = int64_t{1} << 24;  // as config.cpp: far above any real model
constexpr int64_t kMaxLayers = 4096;

std::string shape_string(at::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// config.json fields with T5Config's defaults; errors name the file and the field.
class T5ConfigReader {
 public:
  T5ConfigReader(const nlohmann::json& json, const std::string& file) : json_(json), file_(file) {}
  bool has(const char* field) const { return json_.contains(field) && !json_.at(field).is_null(); }
  int64_t positive(const char* field, std::optional<int64_t> fallback = std::nullopt, int64_t limit = kMaxDimension) const {
    if (!has(field)) {
      if (!fallback) fail_input(file_, std::string("missing required field '") + field + "'");
      return *fallback;
    }
    const auto& value = json_.at(field);
    if (!value.is_number_integer() || value.get<int64_t>() <= 0 || value.get<int64_t>() > limit)
      fail_input(file_, std::string("field '") + field + "' must be a positive integer up to " +
                            std::to_string(limit) + ", got " + json_excerpt(value));
    return value.get<int64_t>();
  }
  int64_t token_id(const char* field, int64_t fallback) const {
    if (!has(field)) return fallback;
    const auto& value = json_.at(field);
    if (!value.is_number_integer() || value.get<int64_t>() < 0)
      fail_input(file_, std::string("field '") + field + "' must be a non-negative integer, got " + json_excerpt(value));
    return value.get<int64_t>();
  }
  bool flag(const char* field, bool fallback) const {
    if (!has(field)) return fallback;
    if (!json_.at(field).is_boolean())
      fail_input(file_, std::string("field '") + field + "' must be true or false, got " + json_excerpt(json_.at(field)));
    return json_.at(field).get<bool>();
  }
  double positive_number(const char* field, double fallback) const {
    if (!has(field)) return fallback;
    const auto& value = json_.at(field);
    if (!value.is_number() || !(value.get<double>() > 0))
      fail_input(file_, std::string("field '") + field + "' must be a positive number, got " + json_excerpt(value));
    return value.get<double>();
  }

 private:
  const nlohmann::json& json_;
  std::string file_;
};

// transformers' T5Config: "<act>" or "gated-<act>"; "gated-gelu" means gelu_new (backward compatibility).
void parse_feed_forward_proj(const std::string& value, const std::string& file, T5Config& config) {
  const std::string gated_prefix = "gated-";
  const bool gated = value.rfind(gated_prefix, 0) == 0;
  std::string activation = gated ? value.substr(gated_prefix.size()) : value;
  if (value == "gated-gelu") activation = "gelu_new";
  const bool known = activation == "relu" || activation == "gelu" || activation == "gelu_new" || activation == "silu";
  if (!known)
    fail_input(file, "field 'feed_forward_proj' is \"" + value +
                         "\"; supported: \"relu\", \"gelu\", \"gelu_new\", \"silu\" and their \"gated-\" forms "
                         "(\"gated-gelu\" as in T5 v1.1 / Flan-T5)");
  config.feed_forward_proj = value;
  config.activation = activation;
  config.gated = gated;
}

// The additive mask of padded keys: [B, 1, 1, S], 0 for real tokens, the dtype's lowest value for
// padding (transformers uses finfo.min rather than -inf, so a row never becomes all -inf).
at::Tensor padding_bias(const at::Tensor& attention_mask, at::ScalarType dtype) {
  const double lowest = dtype == at::kDouble ? std::numeric_limits<double>::lowest() : std::numeric_limits<float>::lowest();
  at::Tensor blocked = attention_mask.eq(0).view({attention_mask.size(0), 1, 1, attention_mask.size(1)});
  return at::zeros(blocked.sizes(), attention_mask.options().dtype(dtype)).masked_fill_(blocked, lowest);
}

at::ScalarType at_least_float(at::ScalarType type) { return at::promote_types(type, at::kFloat); }

class T5 final : public Seq2SeqLM {
 public:
  T5(T5Config config, std::map<std::string, at::Tensor> weights, std::string source, const LoadOptions& options,
     std::vector<std::shared_ptr<void>> keepalive)
      : Seq2SeqLM(std::move(config), std::move(source), options.device, options.dtype),
        weights_(std::move(weights)),
        keepalive_(std::move(keepalive)) {
    for (auto& [name, tensor] : weights_) tensor = tensor.to(device_, dtype_);
  }

  std::string architecture() const override {
    return std::string("T5 (") + (config_.gated ? "gated-" : "") + config_.activation + ", " +
           (config_.tie_word_embeddings ? "tied" : "untied") + " head)";
  }

  at::Tensor rewrite_weight(Stack stack, int64_t layer) const override {
    return weight(rewrite_weight_name(stack, layer));
  }
  std::string rewrite_weight_name(Stack stack, int64_t layer) const override {
    return mlp_prefix(stack, layer) + "DenseReluDense.wo.weight";
  }

  Seq2SeqOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& decoder_ids,
                        const Seq2SeqForwardOptions& options) const override {
    Seq2SeqOutput out;
    const at::Tensor mask = attention_mask.defined() ? attention_mask.to(device_) : at::ones_like(input_ids);
    at::Tensor encoded = encoder(input_ids, mask, options, out);
    if (!encoded.defined()) return out;
    out.encoder_hidden = encoded;
    if (decoder_ids.defined()) out.logits = decoder(decoder_ids, encoded, mask, options, out);
    return out;
  }

 private:
  static std::string stack_name(Stack stack) { return stack == Stack::Encoder ? "encoder" : "decoder"; }
  static std::string block_prefix(Stack stack, int64_t layer) {
    return stack_name(stack) + ".block." + std::to_string(layer) + ".";
  }
  static std::string mlp_prefix(Stack stack, int64_t layer) {
    return block_prefix(stack, layer) + (stack == Stack::Encoder ? "layer.1." : "layer.2.");
  }

  const at::Tensor& weight(const std::string& name) const {
    auto it = weights_.find(name);
    if (it == weights_.end()) fail_input(source_, "missing tensor '" + name + "'");
    return it->second;
  }

  // T5LayerNorm: x / sqrt(mean(x²) + eps) * w, the mean in float32 (at least), no centring, no bias.
  at::Tensor rms_norm(const at::Tensor& x, const std::string& name) const {
    const at::Tensor variance = x.to(at_least_float(x.scalar_type())).pow(2).mean(-1, /*keepdim=*/true);
    return weight(name) * (x * at::rsqrt(variance + config_.norm_eps)).to(dtype_);
  }

  // The relative position bias of a stack ([1, H, Tq, Tk]) from its block 0's bucket embedding.
  at::Tensor position_bias(Stack stack, int64_t query_length, int64_t key_length) const {
    const auto index = at::TensorOptions().dtype(at::kLong).device(device_);
    const at::Tensor relative = at::arange(key_length, index).unsqueeze(0) - at::arange(query_length, index).unsqueeze(1);
    const at::Tensor buckets = t5_relative_position_bucket(relative, stack == Stack::Encoder, config_.num_buckets,
                                                           config_.max_distance);  // [Tq, Tk]
    const at::Tensor table = weight(block_prefix(stack, 0) + "layer.0.SelfAttention.relative_attention_bias.weight");
    return at::embedding(table, buckets).permute({2, 0, 1}).unsqueeze(0);  // [1, H, Tq, Tk]
  }

  // T5Attention: no 1/sqrt(d_kv) scaling; `bias` holds position bias and masks. x: [B, Tq, D], memory: [B, Tk, D].
  at::Tensor attention(const std::string& p, const at::Tensor& x, const at::Tensor& memory, const at::Tensor& bias) const {
    const int64_t heads = config_.n_heads, d_kv = config_.d_kv;
    auto split = [&](const at::Tensor& t) { return t.view({t.size(0), t.size(1), heads, d_kv}).transpose(1, 2); };
    const at::Tensor q = split(at::linear(x, weight(p + "q.weight")));       // [B, H, Tq, d_kv]
    const at::Tensor k = split(at::linear(memory, weight(p + "k.weight")));  // [B, H, Tk, d_kv]
    const at::Tensor v = split(at::linear(memory, weight(p + "v.weight")));
    const at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) + bias;     // [B, H, Tq, Tk]
    const at::Tensor probs = at::softmax(scores.to(at_least_float(scores.scalar_type())), -1).to(q.scalar_type());
    const at::Tensor attended = at::matmul(probs, v).transpose(1, 2).contiguous();  // [B, Tq, H, d_kv]
    return at::linear(attended.view({x.size(0), x.size(1), heads * d_kv}), weight(p + "o.weight"));
  }

  at::Tensor activate(const at::Tensor& x) const {
    if (config_.activation == "relu") return at::relu(x);
    if (config_.activation == "gelu_new") return at::gelu(x, "tanh");
    if (config_.activation == "gelu") return at::gelu(x);
    return at::silu(x);
  }

  // DenseReluDense (or the gated form) on the normed x; captures wo's input and output when asked.
  at::Tensor feed_forward(Stack stack, int64_t layer, const at::Tensor& x, const Seq2SeqIntervention& intervention,
                          Seq2SeqOutput& out) const {
    const std::string p = mlp_prefix(stack, layer) + "DenseReluDense.";
    const at::Tensor key = config_.gated ? activate(at::linear(x, weight(p + "wi_0.weight"))) *
                                               at::linear(x, weight(p + "wi_1.weight"))
                                         : activate(at::linear(x, weight(p + "wi.weight")));  // [B, T, F]
    at::Tensor output = at::linear(key, weight(p + "wo.weight"));                             // [B, T, D]
    if (intervention.stack == stack && intervention.layer == layer && !intervention.capture_at.empty()) {
      const PositionIndex index = make_position_index(intervention.capture_at, device_);
      out.captured_keys = key.index({index.rows, index.positions});
      out.captured_outputs = output.index({index.rows, index.positions});
    }
    return output;
  }

  // Encoder output after final_layer_norm, or undefined when stopped after a block.
  at::Tensor encoder(const at::Tensor& ids, const at::Tensor& mask, const Seq2SeqForwardOptions& options,
                     Seq2SeqOutput& out) const {
    at::Tensor h = at::embedding(weight("shared.weight"), ids);  // [B, S, D]
    const at::Tensor bias = position_bias(Stack::Encoder, ids.size(1), ids.size(1)) + padding_bias(mask, dtype_);
    for (int64_t layer = 0; layer < config_.encoder_layers; ++layer) {
      const std::string p = block_prefix(Stack::Encoder, layer);
      const at::Tensor normed = rms_norm(h, p + "layer.0.layer_norm.weight");
      h = h + attention(p + "layer.0.SelfAttention.", normed, normed, bias);
      h = h + feed_forward(Stack::Encoder, layer, rms_norm(h, p + "layer.1.layer_norm.weight"), options.intervention, out);
      if (layer == options.stop_after_encoder_layer) return at::Tensor();
    }
    return rms_norm(h, "encoder.final_layer_norm.weight");
  }

  // Logits [B, T, V] under teacher forcing.
  at::Tensor decoder(const at::Tensor& ids, const at::Tensor& encoded, const at::Tensor& mask,
                     const Seq2SeqForwardOptions& options, Seq2SeqOutput& out) const {
    const at::Tensor decoder_ids = ids.to(device_);
    const int64_t length = decoder_ids.size(1);
    at::Tensor h = at::embedding(weight("shared.weight"), decoder_ids);  // [B, T, D]
    const double lowest = dtype_ == at::kDouble ? std::numeric_limits<double>::lowest() : std::numeric_limits<float>::lowest();
    const at::Tensor future = at::ones({length, length}, decoder_ids.options().dtype(at::kBool)).triu(1);
    const at::Tensor self_bias = position_bias(Stack::Decoder, length, length).masked_fill(future, lowest);
    const at::Tensor cross_bias = padding_bias(mask, dtype_);
    for (int64_t layer = 0; layer < config_.decoder_layers; ++layer) {
      const std::string p = block_prefix(Stack::Decoder, layer);
      const at::Tensor normed = rms_norm(h, p + "layer.0.layer_norm.weight");
      h = h + attention(p + "layer.0.SelfAttention.", normed, normed, self_bias);
      h = h + attention(p + "layer.1.EncDecAttention.", rms_norm(h, p + "layer.1.layer_norm.weight"), encoded, cross_bias);
      h = h + feed_forward(Stack::Decoder, layer, rms_norm(h, p + "layer.2.layer_norm.weight"), options.intervention, out);
    }
    h = rms_norm(h, "decoder.final_layer_norm.weight");
    if (config_.tie_word_embeddings) return at::linear(h * std::pow(double(config_.d_model), -0.5), weight("shared.weight"));
    return at::linear(h, weight("lm_head.weight"));
  }

  std::map<std::string, at::Tensor> weights_;
  std::vector<std::shared_ptr<void>> keepalive_;  // memory maps that float32 CPU weights alias
};

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
};

std::vector<ExpectedTensor> expected_t5_tensors(const T5Config& c) {
  const int64_t V = c.vocab_size, D = c.d_model, F = c.d_ff, I = c.inner_dim();
  std::vector<ExpectedTensor> expected = {{"shared.weight", {V, D}}};
  auto stack = [&](Stack which, int64_t layers) {
    for (int64_t i = 0; i < layers; ++i) {
      const std::string p = to_string(which) + ".block." + std::to_string(i) + ".";
      std::vector<std::string> attentions = {"layer.0.SelfAttention."};
      if (which == Stack::Decoder) attentions.push_back("layer.1.EncDecAttention.");
      for (const std::string& a : attentions) {
        for (const char* proj : {"q", "k", "v"}) expected.push_back({p + a + proj + ".weight", {I, D}});
        expected.push_back({p + a + "o.weight", {D, I}});
        expected.push_back({p + a.substr(0, 8) + "layer_norm.weight", {D}});
      }
      if (i == 0) expected.push_back({p + "layer.0.SelfAttention.relative_attention_bias.weight", {c.num_buckets, c.n_heads}});
      const std::string mlp = p + (which == Stack::Encoder ? "layer.1." : "layer.2.");
      for (const char* wi : c.gated ? std::vector<const char*>{"wi_0", "wi_1"} : std::vector<const char*>{"wi"})
        expected.push_back({mlp + "DenseReluDense." + wi + ".weight", {F, D}});
      expected.push_back({mlp + "DenseReluDense.wo.weight", {D, F}});
      expected.push_back({mlp + "layer_norm.weight", {D}});
    }
    expected.push_back({to_string(which) + ".final_layer_norm.weight", {D}});
  };
  stack(Stack::Encoder, c.encoder_layers);
  stack(Stack::Decoder, c.decoder_layers);
  if (!c.tie_word_embeddings) expected.push_back({"lm_head.weight", {V, D}});
  return expected;
}

// Hub files store the embedding as shared.weight and/or its aliases encoder.embed_tokens.weight,
// decoder.embed_tokens.weight (all one tensor in transformers): keep one under shared.weight.
void canonicalise_embedding(std::map<std::string, at::Tensor>& tensors) {
  if (tensors.count("shared.weight")) return;
  for (const char* alias : {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"})
    if (tensors.count(alias)) {
      tensors["shared.weight"] = tensors.at(alias);
      return;
    }
}

void validate_t5(const T5Config& config, const std::map<std::string, at::Tensor>& tensors, const std::string& source) {
  for (const ExpectedTensor& expected : expected_t5_tensors(config)) {
    auto found = tensors.find(expected.name);
    if (found == tensors.end())
      fail_input(source, "missing tensor '" + expected.name + "' required by T5" +
                             (expected.name == "shared.weight"
                                  ? " (nor encoder.embed_tokens.weight or decoder.embed_tokens.weight)"
                                  : std::string()));
    if (found->second.sizes() != at::IntArrayRef(expected.shape))
      fail_input(source, "tensor '" + expected.name + "' has shape " + shape_string(found->second.sizes()) +
                             " but config.json implies " + shape_string(expected.shape));
  }
}

// Floating tensors of a safetensors file in float32 (views of the map where no conversion is needed),
// each checked to be finite as the causal loaders do.
void read_safetensors(const fs::path& file, const std::vector<std::string>* only, std::map<std::string, at::Tensor>& tensors,
                      std::vector<std::shared_ptr<void>>& keepalive) {
  const SafetensorsFile safetensors = SafetensorsFile::open(file);
  for (const auto& [name, entry] : safetensors.entries()) {
    if (only && std::find(only->begin(), only->end(), name) == only->end()) continue;
    if (entry.dtype == "F32" || entry.dtype == "F16" || entry.dtype == "BF16" || entry.dtype == "F64")
    {
      tensors[name] = safetensors.tensor(name, at::kFloat);
      check_finite_weight(tensors[name], name, file.string());
    }
  }
  keepalive.push_back(safetensors.mapping());
}

// model.safetensors, or the shards a model.safetensors.index.json lists (plain names beside it).
std::map<std::string, at::Tensor> read_t5_weights(const fs::path& dir, std::vector<std::shared_ptr<void>>& keepalive,
                                                  std::string& source) {
  std::map<std::string, at::Tensor> tensors;
  if (fs::exists(dir / "model.safetensors")) {
    source = (dir / "model.safetensors").string();
    read_safetensors(dir / "model.safetensors", nullptr, tensors, keepalive);
    return tensors;
  }
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (!fs::exists(index_path))
    fail_input(dir.string(), "holds neither model.safetensors nor model.safetensors.index.json (a pytorch_model.bin "
                             "must first be converted: T5ForConditionalGeneration.from_pretrained(dir)"
                             ".save_pretrained(out, safe_serialization=True))");
  source = index_path.string();
  const nlohmann::json index = parse_json(read_file(index_path), source);
  if (!index.is_object() || !index.contains("weight_map") || !index.at("weight_map").is_object())
    fail_input(source, "missing field 'weight_map'");
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& [name, shard] : index.at("weight_map").items()) {
    if (!shard.is_string() || fs::path(shard.get<std::string>()).filename() != fs::path(shard.get<std::string>()))
      fail_input(source, "weight_map entry for tensor '" + name + "' must be a plain file name beside the index");
    by_shard[shard.get<std::string>()].push_back(name);
  }
  for (const auto& [shard, names] : by_shard) read_safetensors(dir / shard, &names, tensors, keepalive);
  return tensors;
}

fs::path folder_of(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return path;
  return path.has_parent_path() ? path.parent_path() : fs::path(".");
}

}  // namespace

std::string to_string(Stack stack) { return stack == Stack::Encoder ? "encoder" : "decoder"; }

T5Config parse_t5_config(const nlohmann::json& json, const std::string& file) {
  if (!json.is_object()) fail_input(file, "config.json must be a JSON object");
  T5ConfigReader reader(json, file);
  T5Config config;
  config.vocab_size = reader.positive("vocab_size");
  config.d_model = reader.positive("d_model");
  config.d_kv = reader.positive("d_kv");
  config.d_ff = reader.positive("d_ff");
  config.n_heads = reader.positive("num_heads");
  config.encoder_layers = reader.positive("num_layers", std::nullopt, kMaxLayers);
  config.decoder_layers = reader.positive("num_decoder_layers", config.encoder_layers, kMaxLayers);
  config.num_buckets = reader.positive("relative_attention_num_buckets", 32);
  config.max_distance = reader.positive("relative_attention_max_distance", 128);
  if (config.num_buckets < 4)
    fail_input(file, "field 'relative_attention_num_buckets' must be at least 4, got " + std::to_string(config.num_buckets));
  config.norm_eps = reader.positive_number("layer_norm_epsilon", 1e-6);
  std::string projection = "relu";
  if (reader.has("feed_forward_proj")) {
    if (!json.at("feed_forward_proj").is_string())
      fail_input(file, "field 'feed_forward_proj' must be a string, got " + json_excerpt(json.at("feed_forward_proj")));
    projection = json.at("feed_forward_proj").get<std::string>();
  }
  parse_feed_forward_proj(projection, file, config);
  config.tie_word_embeddings = reader.flag("tie_word_embeddings", true);
  config.pad_token_id = reader.token_id("pad_token_id", 0);
  config.eos_token_id = reader.token_id("eos_token_id", 1);
  config.decoder_start_token_id = reader.token_id("decoder_start_token_id", config.pad_token_id);
  return config;
}

bool is_t5_folder(const fs::path& path) {
  const fs::path config_json = folder_of(path) / "config.json";
  std::error_code ec;
  if (!fs::is_regular_file(config_json, ec)) return false;
  try {
    const nlohmann::json json = parse_json(read_file(config_json), config_json.string());
    return json.is_object() && json.contains("model_type") && json.at("model_type") == "t5";
  } catch (const InputError&) {
    return false;  // the causal loader reports the malformed file
  }
}

at::Tensor t5_relative_position_bucket(const at::Tensor& relative_position, bool bidirectional, int64_t num_buckets,
                                       int64_t max_distance) {
  at::Tensor buckets = at::zeros_like(relative_position);
  at::Tensor distance;
  if (bidirectional) {
    num_buckets /= 2;
    buckets = buckets + relative_position.gt(0).to(at::kLong) * num_buckets;
    distance = relative_position.abs();
  } else {
    distance = -at::clamp_max(relative_position, 0);
  }
  // Half the buckets are exact offsets, the rest grow logarithmically up to max_distance.
  const int64_t max_exact = num_buckets / 2;
  const at::Tensor is_small = distance.lt(max_exact);
  at::Tensor large = max_exact + (at::log(distance.to(at::kFloat) / max_exact) /
                                  std::log(static_cast<double>(max_distance) / max_exact) * (num_buckets - max_exact))
                                     .to(at::kLong);
  large = at::clamp_max(large, num_buckets - 1);
  return buckets + at::where(is_small, distance, large);
}

std::unique_ptr<Seq2SeqLM> build_t5(const T5Config& config, std::map<std::string, at::Tensor> tensors,
                                    const std::string& source, const LoadOptions& options,
                                    std::vector<std::shared_ptr<void>> keepalive) {
  canonicalise_embedding(tensors);
  validate_t5(config, tensors, source);
  return std::make_unique<T5>(config, std::move(tensors), source, options, std::move(keepalive));
}

std::unique_ptr<Seq2SeqLM> load_seq2seq_lm(const fs::path& path, const LoadOptions& options) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail_input(path.string(), "no such file or directory");
  const fs::path dir = folder_of(path);
  const fs::path config_json = dir / "config.json";
  if (!fs::exists(config_json, ec)) fail_input(dir.string(), "no config.json (expected a Hugging Face T5 folder)");
  const nlohmann::json json = parse_json(read_file(config_json), config_json.string());
  if (!json.is_object() || !json.contains("model_type") || json.at("model_type") != "t5")
    fail_input(config_json.string(), "field 'model_type' must be \"t5\" for an encoder-decoder model");
  const T5Config config = parse_t5_config(json, config_json.string());
  std::vector<std::shared_ptr<void>> keepalive;
  std::string source;
  std::map<std::string, at::Tensor> tensors = read_t5_weights(dir, keepalive, source);
  return build_t5(config, std::move(tensors), source, options, std::move(keepalive));
}

}  // namespace rc
