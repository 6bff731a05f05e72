#include "rome_collapse/model/checkpoint.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <set>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/io/safetensors.h"
#include "rome_collapse/model/architecture.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {

namespace fs = std::filesystem;

namespace {

std::string shape_string(at::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// The first `count` bytes of a file (fewer if it is shorter).
std::string read_prefix(const fs::path& path, size_t count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_input(path.string(), std::string("cannot open: ") + std::strerror(errno));
  std::string bytes(count, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(count));
  bytes.resize(static_cast<size_t>(in.gcount()));
  return bytes;
}

// Pickle protocol 2-5 streams start with PROTO (0x80) and the protocol number.
bool looks_like_pickle(const std::string& prefix) {
  return prefix.size() >= 2 && static_cast<uint8_t>(prefix[0]) == 0x80 && prefix[1] >= 2 && prefix[1] <= 5;
}

bool looks_like_zip(const std::string& prefix) { return prefix.rfind("PK\x03\x04", 0) == 0; }

// torch.save's zip format stores "<archive>/data.pkl" as the first member.
bool zip_first_member_is_pickle(const std::string& prefix) {
  if (prefix.size() < 30) return false;
  size_t name_length = static_cast<uint8_t>(prefix[26]) | (static_cast<uint8_t>(prefix[27]) << 8);
  std::string name = prefix.substr(30, name_length);
  return name.size() >= 8 && name.compare(name.size() - 8, 8, "data.pkl") == 0;
}

// 8-byte header length that fits the file followed by '{': a safetensors file whatever its name.
bool looks_like_safetensors(const std::string& prefix, uintmax_t file_size) {
  if (prefix.size() < 9 || file_size < 9) return false;
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<uint8_t>(prefix[i]);
  return header_size <= file_size - 8 && prefix[8] == '{';
}

[[noreturn]] void refuse_pickle(const fs::path& file) {
  fs::path dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
  fs::path out = dir.string() + "-safetensors";
  fail_input(file.string(),
             "is a PyTorch pickle checkpoint; refusing to unpickle it because loading a pickle can execute "
             "arbitrary code. Convert it to safetensors first, e.g.\n  python -c \"from transformers import "
             "AutoModelForCausalLM as M; M.from_pretrained('" + dir.string() + "').save_pretrained('" +
                 out.string() + "', safe_serialization=True)\"\nthen pass " + out.string());
}

void check_compute_dtype(at::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kDouble && dtype != at::kHalf && dtype != at::kBFloat16)
    throw InputError(std::string("compute dtype ") + c10::toString(dtype) +
                     " is not supported (use float32, float64, float16 or bfloat16)");
}

// Floating-point weights go to the compute dtype; integer/bool buffers (e.g. GPT-2 masks) keep
// their stored type, so they come back as views of the map. Weights are checked to be finite.
at::Tensor load_entry(const SafetensorsFile& file, const std::string& name, at::ScalarType compute_dtype) {
  static const std::map<std::string, at::ScalarType> kNonFloatTypes = {
      {"I64", at::kLong}, {"I32", at::kInt},  {"I16", at::kShort},
      {"I8", at::kChar},  {"U8", at::kByte},  {"BOOL", at::kBool}};
  auto non_float = kNonFloatTypes.find(file.entries().at(name).dtype);
  at::Tensor tensor = file.tensor(name, non_float == kNonFloatTypes.end() ? compute_dtype : non_float->second);
  check_finite_weight(tensor, name, file.path().string());
  return tensor;
}

// ---- Hugging Face directories ----------------------------------------------------------------

Checkpoint load_single_safetensors(const fs::path& file, const fs::path& config_json, at::ScalarType compute_dtype) {
  Checkpoint checkpoint;
  checkpoint.config = load_hf_config(config_json);
  checkpoint.source = file.string();
  checkpoint.format = "safetensors";
  SafetensorsFile safetensors = SafetensorsFile::open(file);
  for (const auto& [name, entry] : safetensors.entries())
    checkpoint.tensors[name] = load_entry(safetensors, name, compute_dtype);
  checkpoint.keepalive.push_back(safetensors.mapping());
  return checkpoint;
}

Checkpoint load_sharded_safetensors(const fs::path& index_json, const fs::path& config_json,
                                    at::ScalarType compute_dtype) {
  const std::string index_file = index_json.string();
  const nlohmann::json index = parse_json(read_file(index_json), index_file);
  if (!index.is_object() || !index.contains("weight_map") || !index.at("weight_map").is_object())
    fail_input(index_file, "missing field 'weight_map' (an object mapping tensor names to shard files)");

  // Shard file -> tensor names it should provide; each shard is opened once.
  std::map<std::string, std::vector<std::string>> names_by_shard;
  for (const auto& [name, shard] : index.at("weight_map").items()) {
    if (!shard.is_string())
      fail_input(index_file, "weight_map entry for tensor '" + name + "' must be a file name, got " + json_excerpt(shard));
    fs::path shard_path = shard.get<std::string>();
    // Shards live beside the index; refuse paths that would escape the directory.
    if (shard_path.is_absolute() || shard_path.filename() != shard_path)
      fail_input(index_file, "weight_map entry for tensor '" + name + "' names \"" + shard_path.string() +
                                 "\"; shard files must be plain file names in the same directory");
    names_by_shard[shard_path.string()].push_back(name);
  }
  if (names_by_shard.empty()) fail_input(index_file, "weight_map is empty");

  Checkpoint checkpoint;
  checkpoint.config = load_hf_config(config_json);
  checkpoint.source = index_file;
  checkpoint.format = "safetensors-sharded";
  const fs::path dir = index_json.parent_path();
  for (const auto& [shard_name, names] : names_by_shard) {
    const fs::path shard_path = dir / shard_name;
    if (!fs::exists(shard_path)) fail_input(index_file, "shard file " + shard_path.string() + " does not exist");
    SafetensorsFile shard = SafetensorsFile::open(shard_path);
    for (const std::string& name : names) {
      if (!shard.contains(name))
        fail_input(shard_path.string(), "tensor '" + name + "' is listed in " + index_file +
                                            " but missing from this shard");
      checkpoint.tensors[name] = load_entry(shard, name, compute_dtype);
    }
    checkpoint.keepalive.push_back(shard.mapping());
  }
  return checkpoint;
}

fs::path require_config(const fs::path& dir, const fs::path& weights) {
  fs::path config_json = dir / "config.json";
  if (!fs::exists(config_json))
    fail_input(weights.string(), "no config.json beside it (expected " + config_json.string() + ")");
  return config_json;
}

// ---- llama2.c ----------------------------------------------------------------------------------

// Reads consecutive float32 arrays out of a llama2.c file.
class Float32Reader {
 public:
  Float32Reader(const fs::path& path, uint64_t offset) : path_(path), in_(path, std::ios::binary) {
    if (!in_) fail_input(path.string(), std::string("cannot open: ") + std::strerror(errno));
    in_.seekg(static_cast<std::streamoff>(offset));
  }
  at::Tensor read(std::vector<int64_t> shape, const std::string& what) {
    at::Tensor tensor = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
    auto bytes = static_cast<std::streamsize>(tensor.numel() * sizeof(float));
    in_.read(static_cast<char*>(tensor.data_ptr()), bytes);
    if (in_.gcount() != bytes) fail_input(path_.string(), "truncated while reading " + what);
    return tensor;
  }
  void skip(uint64_t floats) { in_.seekg(static_cast<std::streamoff>(floats * sizeof(float)), std::ios::cur); }

 private:
  fs::path path_;
  std::ifstream in_;
};

// transformers' convert_llama_weights_to_hf.py permute(): llama2.c rotates interleaved pairs
// (x0,x1),(x2,x3)...; HF's rotate_half pairs x_i with x_{i+hd/2}. Reordering each head's rows
// [2i + p] -> [p * hd/2 + i] makes HF rotary on the permuted weight equal llama2.c on the original.
at::Tensor permute_for_rotate_half(const at::Tensor& weight, int64_t n_heads, int64_t dim1, int64_t dim2) {
  return weight.view({n_heads, dim1 / n_heads / 2, 2, dim2}).transpose(1, 2).reshape({dim1, dim2});  // [dim1, dim2]
}

// The legacy llama2.c header: seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size, seq_len); a negative vocab_size means the classifier is stored after the weights.
struct Llama2cHeader {
  int64_t dim = 0, hidden = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab = 0, seq_len = 0;
  int32_t vocab_field = 0;  // as written (its sign says whether wcls is stored)
  bool shared_classifier = false;
  int64_t head_dim = 0, kv_dim = 0;

  std::string text() const {
    return "dim=" + std::to_string(dim) + " hidden_dim=" + std::to_string(hidden) + " n_layers=" +
           std::to_string(n_layers) + " n_heads=" + std::to_string(n_heads) + " n_kv_heads=" +
           std::to_string(n_kv_heads) + " vocab_size=" + std::to_string(vocab_field) + " seq_len=" + std::to_string(seq_len);
  }
};

// The header's fields, each positive (vocab_size nonzero) and the head shapes consistent.
Llama2cHeader read_llama2c_header(const fs::path& path, uintmax_t file_size) {
  const std::string file = path.string();
  const std::string prefix = read_prefix(path, 28);
  if (prefix.size() >= 4) {
    uint32_t magic = 0;
    std::memcpy(&magic, prefix.data(), 4);
    if (magic == 0x616b3432)  // "ak42": llama2.c export.py version >= 1
      fail_input(file, "is a llama2.c 'version 1+' export (magic ak42); only the legacy format "
                       "(export.py --version 0 / legacy_export) is supported");
  }
  if (prefix.size() < 28)
    fail_input(file, "not a safetensors, pickle or llama2.c checkpoint: " + std::to_string(file_size) +
                         " bytes is shorter than the 28-byte llama2.c header (truncated?)");
  int32_t header[7];
  std::memcpy(header, prefix.data(), sizeof(header));
  const char* field_names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i) {
    if (header[i] == 0 || (header[i] < 0 && i != 5))
      fail_input(file, "not a safetensors, pickle or llama2.c checkpoint: llama2.c header field '" +
                           std::string(field_names[i]) + "' is " + std::to_string(header[i]) +
                           " (must be positive)");
  }
  Llama2cHeader h;
  h.dim = header[0], h.hidden = header[1], h.n_layers = header[2], h.n_heads = header[3], h.n_kv_heads = header[4];
  h.seq_len = header[6];
  h.vocab_field = header[5];
  h.shared_classifier = header[5] > 0;  // negative vocab_size: wcls stored at the end
  h.vocab = header[5] > 0 ? header[5] : -static_cast<int64_t>(header[5]);
  if (h.dim % h.n_heads != 0)
    fail_input(file, "llama2.c header: dim (" + std::to_string(h.dim) + ") is not divisible by n_heads (" +
                         std::to_string(h.n_heads) + ")");
  if (h.n_heads % h.n_kv_heads != 0)
    fail_input(file, "llama2.c header: n_heads (" + std::to_string(h.n_heads) + ") is not divisible by n_kv_heads (" +
                         std::to_string(h.n_kv_heads) + ")");
  h.head_dim = h.dim / h.n_heads;
  if (h.head_dim % 2 != 0)
    fail_input(file, "llama2.c header: head size dim/n_heads (" + std::to_string(h.head_dim) + ") must be even");
  h.kv_dim = h.head_dim * h.n_kv_heads;
  return h;
}

// The file is exactly as long as the header implies: a size check before reading anything, so that
// a corrupt header cannot make the reader allocate or read past the end.
void check_llama2c_size(const Llama2cHeader& h, const std::string& file, uintmax_t file_size) {
  // Every count below is a product of int32 values, so it fits int64 except for pathological
  // headers; those are caught by the overflow check.
  bool overflow = false;
  auto mul = [&overflow](std::initializer_list<int64_t> factors) {
    int64_t product = 1;
    for (int64_t factor : factors) overflow |= __builtin_mul_overflow(product, factor, &product);
    return product;
  };
  const int64_t dim = h.dim, hidden = h.hidden, n_layers = h.n_layers, kv_dim = h.kv_dim;
  int64_t floats = 0;
  for (int64_t count : {mul({h.vocab, dim}), mul({n_layers, dim}), mul({n_layers, dim, dim}),
                        mul({n_layers, kv_dim, dim}), mul({n_layers, kv_dim, dim}), mul({n_layers, dim, dim}),
                        mul({n_layers, dim}), mul({n_layers, hidden, dim}), mul({n_layers, dim, hidden}),
                        mul({n_layers, hidden, dim}), dim, mul({h.seq_len, h.head_dim / 2, 2}),
                        h.shared_classifier ? int64_t{0} : mul({h.vocab, dim})})
    overflow |= __builtin_add_overflow(floats, count, &floats);
  int64_t expected_size = 0;
  overflow |= __builtin_mul_overflow(floats, int64_t{4}, &expected_size);
  overflow |= __builtin_add_overflow(expected_size, int64_t{28}, &expected_size);
  if (overflow) fail_input(file, "llama2.c header describes a model too large to address (corrupt header?)");
  if (file_size < static_cast<uintmax_t>(expected_size))
    fail_input(file, "truncated llama2.c checkpoint: the header (" + h.text() + ") implies " +
                         std::to_string(expected_size) + " bytes but the file has " + std::to_string(file_size));
  if (file_size > static_cast<uintmax_t>(expected_size))
    fail_input(file, "llama2.c checkpoint has " + std::to_string(file_size - expected_size) +
                         " extra bytes: the header (" + h.text() + ") implies " + std::to_string(expected_size) +
                         " bytes but the file has " + std::to_string(file_size) +
                         " (not a llama2.c file, or a different export version?)");
}

// A Llama config with the header's shapes and llama2.c's fixed constants.
ModelConfig llama2c_config(const Llama2cHeader& h) {
  ModelConfig config = default_config(Architecture::Llama);
  config.model_type = "llama2c";
  config.vocab_size = h.vocab;
  config.d_model = h.dim;
  config.n_layers = h.n_layers;
  config.n_heads = h.n_heads;
  config.n_kv_heads = h.n_kv_heads;
  config.head_dim = h.head_dim;
  config.d_ff = h.hidden;
  config.max_positions = h.seq_len;
  config.norm_eps = 1e-5;
  config.rope_theta = 10000.0;
  config.rotary_dim = h.head_dim;
  config.tie_word_embeddings = h.shared_classifier;
  config.bos_token_id = 1;
  config.eos_token_id = 2;
  return config;
}

// Reads the weights in file order and stores them under the Hugging Face Llama names, q and k
// permuted for rotate_half.
void read_llama2c_weights(const fs::path& path, const Llama2cHeader& h, at::ScalarType compute_dtype,
                          Checkpoint& checkpoint) {
  const int64_t dim = h.dim, hidden = h.hidden, n_layers = h.n_layers, kv_dim = h.kv_dim;
  Float32Reader reader(path, 28);
  at::Tensor embedding = reader.read({h.vocab, dim}, "token_embedding_table");  // [V, D]
  at::Tensor rms_att = reader.read({n_layers, dim}, "rms_att_weight");           // [L, D]
  at::Tensor wq = reader.read({n_layers, dim, dim}, "wq");                       // [L, D, D]
  at::Tensor wk = reader.read({n_layers, kv_dim, dim}, "wk");                    // [L, KV*hd, D]
  at::Tensor wv = reader.read({n_layers, kv_dim, dim}, "wv");                    // [L, KV*hd, D]
  at::Tensor wo = reader.read({n_layers, dim, dim}, "wo");                       // [L, D, D]
  at::Tensor rms_ffn = reader.read({n_layers, dim}, "rms_ffn_weight");           // [L, D]
  at::Tensor w1 = reader.read({n_layers, hidden, dim}, "w1");                    // [L, F, D]
  at::Tensor w2 = reader.read({n_layers, dim, hidden}, "w2");                    // [L, D, F]
  at::Tensor w3 = reader.read({n_layers, hidden, dim}, "w3");                    // [L, F, D]
  at::Tensor rms_final = reader.read({dim}, "rms_final_weight");                 // [D]
  reader.skip(static_cast<uint64_t>(h.seq_len * h.head_dim));  // freq_cis_real/imag: recomputed from rope_theta
  at::Tensor classifier = h.shared_classifier ? embedding : reader.read({h.vocab, dim}, "wcls");  // [V, D]

  auto put = [&](const std::string& name, const at::Tensor& tensor) {
    checkpoint.tensors[name] = tensor.to(compute_dtype).contiguous();
    check_finite_weight(checkpoint.tensors[name], name, checkpoint.source);
  };
  put("model.embed_tokens.weight", embedding);
  for (int64_t i = 0; i < n_layers; ++i) {
    const std::string prefix_i = "model.layers." + std::to_string(i) + ".";
    put(prefix_i + "input_layernorm.weight", rms_att[i]);
    put(prefix_i + "self_attn.q_proj.weight", permute_for_rotate_half(wq[i], h.n_heads, dim, dim));
    put(prefix_i + "self_attn.k_proj.weight", permute_for_rotate_half(wk[i], h.n_kv_heads, kv_dim, dim));
    put(prefix_i + "self_attn.v_proj.weight", wv[i]);
    put(prefix_i + "self_attn.o_proj.weight", wo[i]);
    put(prefix_i + "post_attention_layernorm.weight", rms_ffn[i]);
    put(prefix_i + "mlp.gate_proj.weight", w1[i]);
    put(prefix_i + "mlp.down_proj.weight", w2[i]);
    put(prefix_i + "mlp.up_proj.weight", w3[i]);
  }
  put("model.norm.weight", rms_final);
  if (h.shared_classifier) {
    // Same storage as the embedding, as in the tied HF model.
    checkpoint.tensors["lm_head.weight"] = checkpoint.tensors.at("model.embed_tokens.weight");
  } else {
    put("lm_head.weight", classifier);
  }
}

Checkpoint load_llama2c(const fs::path& path, at::ScalarType compute_dtype) {
  const std::string file = path.string();
  std::error_code size_error;
  const uintmax_t file_size = fs::file_size(path, size_error);
  if (size_error) fail_input(file, "cannot read the file size: " + size_error.message());
  const Llama2cHeader header = read_llama2c_header(path, file_size);
  check_llama2c_size(header, file, file_size);
  Checkpoint checkpoint;
  checkpoint.source = file;
  checkpoint.format = "llama2c";
  checkpoint.config = llama2c_config(header);
  read_llama2c_weights(path, header, compute_dtype, checkpoint);
  return checkpoint;
}

// ---- expected tensors, from the architecture's spec ------------------------------------------

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool optional = false;  // checked only when present
};

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& config) {
  std::vector<ExpectedTensor> expected;
  for (const TensorSpec& tensor : architecture_spec(config.arch).tensors) {
    // A tied model may still store its head (llama2.c always does): then it must fit too.
    const bool optional = !tensor_present(tensor, config);
    if (optional && tensor.presence != Presence::Untied) continue;
    const int64_t layers = is_per_layer(tensor) ? config.n_layers : 1;
    for (int64_t layer = 0; layer < layers; ++layer)
      expected.push_back({tensor_name(tensor, layer), tensor_shape(tensor, config), optional});
  }
  return expected;
}

bool ends_with_any(const std::string& name, const std::vector<std::string>& suffixes) {
  for (const auto& suffix : suffixes)
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return true;
  return false;
}

// Real checkpoints name tensors in more than one way: some omit the family's leading prefix
// (OPT "decoder.*", GPT-2 "h.*"), old ones carry buffers the model never reads (Pythia's
// attention.bias / masked_bias / rotary_emb.inv_freq). Renames the first, drops the second.
void normalise_tensor_names(Checkpoint& checkpoint) {
  const ArchitectureSpec& spec = architecture_spec(checkpoint.config.arch);
  std::set<std::string> expected;
  for (const auto& tensor : expected_tensors(checkpoint.config)) expected.insert(tensor.name);
  std::vector<std::string> names;
  for (const auto& entry : checkpoint.tensors) names.push_back(entry.first);
  for (const std::string& name : names) {
    if (expected.count(name)) continue;
    const std::string prefixed = spec.optional_prefix + name;
    if (!spec.optional_prefix.empty() && expected.count(prefixed) && !checkpoint.tensors.count(prefixed)) {
      checkpoint.tensors[prefixed] = checkpoint.tensors.at(name);
      checkpoint.tensors.erase(name);
    } else if (ends_with_any(name, spec.ignored_suffixes)) {
      checkpoint.tensors.erase(name);
    }
  }
}

}  // namespace

// A NaN or Inf weight makes every output NaN ("!!" from generate, null perplexities, an edit that
// fails deep inside with no hint): refused at load, naming the tensor and the file (exit 3). The
// quick test is one sum in the tensor's own dtype (no temporary of the tensor's size: a sum with
// dtype=double would first copy the tensor to double on the CPU): a finite sum means every element
// is finite, since NaN and Inf propagate. Only a non-finite sum (or a finite tensor whose sum
// overflows) pays for the element-wise count.
void check_finite_weight(const at::Tensor& tensor, const std::string& name, const std::string& file) {
  if (!at::isFloatingType(tensor.scalar_type()) || tensor.numel() == 0) return;
  if (std::isfinite(tensor.sum().item<double>())) return;
  const at::Tensor bad = tensor.isfinite().logical_not();
  const int64_t count = bad.sum().item<int64_t>();
  if (count == 0) return;  // finite values whose sum overflowed the dtype
  const int64_t first = bad.reshape(-1).nonzero()[0][0].item<int64_t>();
  const double value = tensor.reshape(-1)[first].item<double>();
  throw NumericError(file + ": tensor '" + name + "' holds " + std::to_string(count) + " non-finite value" +
                     (count == 1 ? "" : "s") + " (the first, at flat index " + std::to_string(first) + ", is " +
                     std::to_string(value) + "); the checkpoint is corrupt or overflowed its dtype");
}

void validate_checkpoint(const Checkpoint& checkpoint) {
  const ModelConfig& config = checkpoint.config;
  const std::string implied_by = checkpoint.format == "llama2c" ? "the llama2.c header" : "config.json";
  // Every layer needs several tensors: refuse an impossible layer count before listing them all.
  if (config.n_layers > static_cast<int64_t>(checkpoint.tensors.size()))
    fail_input(checkpoint.source, implied_by + " declares " + std::to_string(config.n_layers) +
                                      " layers but the checkpoint holds only " +
                                      std::to_string(checkpoint.tensors.size()) + " tensors");
  std::set<std::string> known;
  for (const ExpectedTensor& expected : expected_tensors(config)) {
    known.insert(expected.name);
    auto found = checkpoint.tensors.find(expected.name);
    if (found == checkpoint.tensors.end()) {
      if (expected.optional) continue;
      fail_input(checkpoint.source, "missing tensor '" + expected.name + "' required by " + to_string(config.arch));
    }
    // An integer dtype on a weight is a mislabelled file (F32 bytes read as I32 have the same size).
    if (!at::isFloatingType(found->second.scalar_type()))
      fail_input(checkpoint.source, "tensor '" + expected.name + "' has the integer dtype " +
                                        std::string(c10::toString(found->second.scalar_type())) +
                                        "; a model weight must be a floating-point tensor (F32, F16, BF16, F64)");
    if (found->second.sizes() != at::IntArrayRef(expected.shape))
      fail_input(checkpoint.source, "tensor '" + expected.name + "' has shape " +
                                        shape_string(found->second.sizes()) + " but " + implied_by + " implies " +
                                        shape_string(expected.shape));
  }
  // A tensor the model would not read means the file and config.json disagree (another variant,
  // more layers than declared): refused rather than silently ignored.
  const auto& ignored = architecture_spec(config.arch).ignored_suffixes;
  for (const auto& [name, tensor] : checkpoint.tensors)
    if (!known.count(name) && !ends_with_any(name, ignored))
      fail_input(checkpoint.source, "unexpected tensor '" + name + "': " + to_string(config.arch) + " with this " +
                                        implied_by + " has no such weight");
}

Checkpoint load_checkpoint(const fs::path& path, at::ScalarType compute_dtype) {
  check_compute_dtype(compute_dtype);
  std::error_code ec;
  if (!fs::exists(path, ec)) fail_input(path.string(), "no such file or directory");

  Checkpoint checkpoint;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / "model.safetensors")) {
      checkpoint = load_single_safetensors(path / "model.safetensors", require_config(path, path / "model.safetensors"),
                                           compute_dtype);
    } else if (fs::exists(path / "model.safetensors.index.json")) {
      const fs::path index = path / "model.safetensors.index.json";
      checkpoint = load_sharded_safetensors(index, require_config(path, index), compute_dtype);
    } else if (fs::exists(path / "pytorch_model.bin") || fs::exists(path / "pytorch_model.bin.index.json")) {
      refuse_pickle(fs::exists(path / "pytorch_model.bin") ? path / "pytorch_model.bin"
                                                           : path / "pytorch_model.bin.index.json");
    } else {
      fail_input(path.string(), "directory holds neither model.safetensors nor model.safetensors.index.json "
                                "(expected a Hugging Face model directory, or pass a llama2.c .bin file)");
    }
  } else {
    const uintmax_t file_size = fs::file_size(path, ec);
    const std::string prefix = read_prefix(path, 64);
    const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
    if (path.filename() == "model.safetensors.index.json") {
      checkpoint = load_sharded_safetensors(path, require_config(dir, path), compute_dtype);
    } else if (path.extension() == ".safetensors" || looks_like_safetensors(prefix, file_size)) {
      checkpoint = load_single_safetensors(path, require_config(dir, path), compute_dtype);
    } else if (looks_like_pickle(prefix) || (looks_like_zip(prefix) && zip_first_member_is_pickle(prefix)) ||
               path.filename() == "pytorch_model.bin") {
      refuse_pickle(path);
    } else if (looks_like_zip(prefix)) {
      fail_input(path.string(), "is a zip archive, not a safetensors or llama2.c checkpoint (a PyTorch zip "
                                "checkpoint holds a pickle, which is refused; convert it to safetensors)");
    } else {
      checkpoint = load_llama2c(path, compute_dtype);
    }
  }
  normalise_tensor_names(checkpoint);
  validate_checkpoint(checkpoint);
  return checkpoint;
}

}  // namespace rc
