// Checkpoint loading: HF safetensors (single, sharded, BF16), llama2.c files, and clear errors for
// malformed or unsafe inputs.
#include <cstring>
#include <fstream>
#include <functional>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/io/safetensors.h"
#include "rome_collapse/model/checkpoint.h"
#include "rome_collapse/model/config.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using rc::Architecture;
using rc::Checkpoint;
using rc::InputError;

namespace {

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string u64_le(uint64_t value) {
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  return bytes;
}

// A raw safetensors file: header length, header text, `data_bytes` zero bytes.
fs::path write_raw_safetensors(const fs::path& dir, const std::string& name, const std::string& header,
                               size_t data_bytes) {
  fs::path path = dir / name;
  write_bytes(path, u64_le(header.size()) + header + std::string(data_bytes, '\0'));
  return path;
}

// Runs `load` and returns the InputError message; fails the test when nothing (or something else) is thrown.
std::string input_error_of(const std::function<void()>& load) {
  try {
    load();
  } catch (const InputError& error) {
    return error.what();
  } catch (const std::exception& error) {
    ADD_FAILURE() << "expected rc::InputError, got another exception: " << error.what();
    return "";
  }
  ADD_FAILURE() << "expected rc::InputError, nothing was thrown";
  return "";
}

#define EXPECT_MESSAGE_HAS(message, fragment) \
  EXPECT_NE((message).find(fragment), std::string::npos) << "message: " << (message) << "\nlacks: " << (fragment)

void expect_same_tensors(const Checkpoint& a, const Checkpoint& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, tensor] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(name)) << name;
    EXPECT_TRUE(tensor.equal(b.tensors.at(name))) << name;
  }
}

fs::path copy_reference(const std::string& model, const std::string& scratch_name) {
  fs::path dir = rc::test::scratch_dir(scratch_name);
  fs::path source = rc::test::shared_path("reference/" + model);
  fs::copy_file(source / "config.json", dir / "config.json");
  fs::copy_file(source / "model.safetensors", dir / "model.safetensors");
  fs::permissions(dir / "config.json", fs::perms::owner_write, fs::perm_options::add);
  fs::permissions(dir / "model.safetensors", fs::perms::owner_write, fs::perm_options::add);
  return dir;
}

// llama2.c files: 7 int32 header then float32 arrays.
std::vector<int32_t> llama2c_header(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<int32_t> header(7);
  in.read(reinterpret_cast<char*>(header.data()), 28);
  return header;
}

at::Tensor read_floats(const fs::path& path, uint64_t float_offset, std::vector<int64_t> shape) {
  at::Tensor tensor = at::empty(shape, at::kFloat);
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(28 + 4 * float_offset));
  in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(tensor.numel() * 4));
  EXPECT_EQ(in.gcount(), tensor.numel() * 4);
  return tensor;
}

}  // namespace

// ---- 1. reference HF checkpoints ---------------------------------------------------------------

TEST(ReferenceCheckpoints, TinyGpt2LoadsWithConfigValues) {
  ROME_REQUIRE_SHARED();
  Checkpoint checkpoint = rc::load_checkpoint(rc::test::shared_path("reference/tiny-gpt2"), at::kFloat);
  const rc::ModelConfig& config = checkpoint.config;
  EXPECT_EQ(config.arch, Architecture::GPT2);
  EXPECT_EQ(config.model_type, "gpt2");
  EXPECT_EQ(config.d_model, 64);
  EXPECT_EQ(config.n_layers, 4);
  EXPECT_EQ(config.n_heads, 4);
  EXPECT_EQ(config.n_kv_heads, 4);
  EXPECT_EQ(config.head_dim, 16);
  EXPECT_EQ(config.d_ff, 256);  // n_inner null -> 4 * n_embd
  EXPECT_EQ(config.max_positions, 256);
  EXPECT_EQ(config.vocab_size, 50257);
  EXPECT_DOUBLE_EQ(config.norm_eps, 1e-5);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.bos_token_id, 50256);
  EXPECT_EQ(config.eos_token_id, 50256);
  EXPECT_EQ(checkpoint.format, "safetensors");
  EXPECT_EQ(checkpoint.tensors.size(), 52u);
  EXPECT_FALSE(checkpoint.tensors.count("lm_head.weight"));  // tied: HF does not store it
  const at::Tensor& c_attn = checkpoint.tensors.at("transformer.h.0.attn.c_attn.weight");
  EXPECT_EQ(c_attn.scalar_type(), at::kFloat);
  EXPECT_EQ(c_attn.sizes(), at::IntArrayRef({64, 192}));
  EXPECT_TRUE(at::isfinite(c_attn).all().item<bool>());
}

TEST(ReferenceCheckpoints, TinyLlamaLoadsWithConfigValues) {
  ROME_REQUIRE_SHARED();
  Checkpoint checkpoint = rc::load_checkpoint(rc::test::shared_path("reference/tiny-llama"), at::kFloat);
  const rc::ModelConfig& config = checkpoint.config;
  EXPECT_EQ(config.arch, Architecture::Llama);
  EXPECT_EQ(config.d_model, 64);
  EXPECT_EQ(config.n_layers, 4);
  EXPECT_EQ(config.n_heads, 4);
  EXPECT_EQ(config.n_kv_heads, 2);
  EXPECT_EQ(config.head_dim, 16);
  EXPECT_EQ(config.rotary_dim, 16);
  EXPECT_EQ(config.d_ff, 172);
  EXPECT_EQ(config.max_positions, 256);
  EXPECT_EQ(config.vocab_size, 50257);
  EXPECT_DOUBLE_EQ(config.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(config.norm_eps, 1e-5);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_EQ(config.eos_token_id, 2);
  EXPECT_EQ(checkpoint.tensors.at("model.layers.0.self_attn.k_proj.weight").sizes(), at::IntArrayRef({32, 64}));
}

TEST(ReferenceCheckpoints, TinyGptjLoadsWithConfigValues) {
  ROME_REQUIRE_SHARED();
  Checkpoint checkpoint = rc::load_checkpoint(rc::test::shared_path("reference/tiny-gptj"), at::kFloat);
  const rc::ModelConfig& config = checkpoint.config;
  EXPECT_EQ(config.arch, Architecture::GPTJ);
  EXPECT_EQ(config.d_model, 32);
  EXPECT_EQ(config.n_heads, 4);
  EXPECT_EQ(config.head_dim, 8);
  EXPECT_EQ(config.rotary_dim, 4);
  EXPECT_EQ(config.d_ff, 128);
  EXPECT_EQ(config.vocab_size, 50400);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_EQ(checkpoint.tensors.at("lm_head.bias").sizes(), at::IntArrayRef({50400}));
}

TEST(ReferenceCheckpoints, SafetensorsFilePathUsesItsDirectoryConfig) {
  ROME_REQUIRE_SHARED();
  Checkpoint from_file =
      rc::load_checkpoint(rc::test::shared_path("reference/tiny-gptj/model.safetensors"), at::kFloat);
  Checkpoint from_dir = rc::load_checkpoint(rc::test::shared_path("reference/tiny-gptj"), at::kFloat);
  EXPECT_EQ(from_file.config.rotary_dim, 4);
  expect_same_tensors(from_file, from_dir);
}

TEST(ReferenceCheckpoints, ComputeDtypeIsApplied) {
  ROME_REQUIRE_SHARED();
  Checkpoint f32 = rc::load_checkpoint(rc::test::shared_path("reference/tiny-llama"), at::kFloat);
  Checkpoint f64 = rc::load_checkpoint(rc::test::shared_path("reference/tiny-llama"), at::kDouble);
  for (const auto& [name, tensor] : f64.tensors) {
    EXPECT_EQ(tensor.scalar_type(), at::kDouble) << name;
    EXPECT_TRUE(tensor.to(at::kFloat).equal(f32.tensors.at(name))) << name;
  }
}

TEST(ReferenceCheckpoints, EditingAMappedTensorLeavesTheFileAlone) {
  ROME_REQUIRE_SHARED();
  fs::path dir = copy_reference("tiny-gpt2", "io-cow");
  const std::string name = "transformer.h.1.mlp.c_proj.weight";
  at::Tensor before;
  {
    Checkpoint checkpoint = rc::load_checkpoint(dir, at::kFloat);
    before = checkpoint.tensors.at(name).clone();
    checkpoint.tensors.at(name).add_(1.0);  // copy-on-write: only this process's page changes
    EXPECT_TRUE(checkpoint.tensors.at(name).equal(before + 1.0));
  }
  Checkpoint reloaded = rc::load_checkpoint(dir, at::kFloat);
  EXPECT_TRUE(reloaded.tensors.at(name).equal(before));
}

// ---- 2. llama2.c checkpoints -------------------------------------------------------------------

TEST(Llama2c, Stories260KLoadsWithPermutedQK) {
  ROME_REQUIRE_SHARED();
  fs::path path = rc::test::shared_path("models/stories260K/stories260K.bin");
  Checkpoint checkpoint = rc::load_checkpoint(path, at::kFloat);
  const rc::ModelConfig& config = checkpoint.config;
  EXPECT_EQ(checkpoint.format, "llama2c");
  EXPECT_EQ(config.arch, Architecture::Llama);
  EXPECT_EQ(config.model_type, "llama2c");
  EXPECT_EQ(config.d_model, 64);
  EXPECT_EQ(config.d_ff, 172);
  EXPECT_EQ(config.n_layers, 5);
  EXPECT_EQ(config.n_heads, 8);
  EXPECT_EQ(config.n_kv_heads, 4);
  EXPECT_EQ(config.head_dim, 8);
  EXPECT_EQ(config.vocab_size, 512);
  EXPECT_EQ(config.max_positions, 512);
  EXPECT_TRUE(config.tie_word_embeddings);  // positive vocab_size in the header: shared classifier
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_EQ(config.eos_token_id, 2);
  EXPECT_EQ(checkpoint.tensors.size(), 1u + 5 * 9 + 1 + 1);
  EXPECT_TRUE(checkpoint.tensors.at("lm_head.weight").equal(checkpoint.tensors.at("model.embed_tokens.weight")));

  const int64_t V = 512, D = 64, L = 5, H = 8, KV = 4, hd = 8, kv_dim = KV * hd;
  // Layout: embedding [V,D], rms_att [L,D], wq [L,D,D], wk [L,kv_dim,D], ...
  at::Tensor embedding = read_floats(path, 0, {V, D});
  EXPECT_TRUE(checkpoint.tensors.at("model.embed_tokens.weight").equal(embedding));
  at::Tensor wq0 = read_floats(path, V * D + L * D, {D, D});                          // [D, D]
  at::Tensor wk0 = read_floats(path, V * D + L * D + L * D * D, {kv_dim, D});         // [kv_dim, D]
  at::Tensor wv0 = read_floats(path, V * D + L * D + L * D * D + L * kv_dim * D, {kv_dim, D});
  // HF row h*hd + p*hd/2 + i holds llama2.c row h*hd + 2i + p (transformers' permute()).
  const at::Tensor& q_proj = checkpoint.tensors.at("model.layers.0.self_attn.q_proj.weight");
  const at::Tensor& k_proj = checkpoint.tensors.at("model.layers.0.self_attn.k_proj.weight");
  for (int64_t h = 0; h < H; ++h)
    for (int64_t p = 0; p < 2; ++p)
      for (int64_t i = 0; i < hd / 2; ++i) {
        EXPECT_TRUE(q_proj[h * hd + p * hd / 2 + i].equal(wq0[h * hd + 2 * i + p])) << "q head " << h;
        if (h < KV) EXPECT_TRUE(k_proj[h * hd + p * hd / 2 + i].equal(wk0[h * hd + 2 * i + p])) << "k head " << h;
      }
  EXPECT_TRUE(q_proj.equal(wq0.view({H, hd / 2, 2, D}).transpose(1, 2).reshape({D, D})));
  EXPECT_FALSE(q_proj.equal(wq0));  // the permutation actually moved rows
  EXPECT_TRUE(checkpoint.tensors.at("model.layers.0.self_attn.v_proj.weight").equal(wv0));  // v is not permuted
}

TEST(Llama2c, Aidreams260KLoads) {
  ROME_REQUIRE_SHARED();
  Checkpoint checkpoint =
      rc::load_checkpoint(rc::test::shared_path("models/aidreams260K/aidreams260K.bin"), at::kFloat);
  const rc::ModelConfig& config = checkpoint.config;
  EXPECT_EQ(config.n_layers, 4);
  EXPECT_EQ(config.n_heads, 4);
  EXPECT_EQ(config.n_kv_heads, 4);
  EXPECT_EQ(config.max_positions, 128);
  EXPECT_EQ(config.head_dim, 16);
  EXPECT_EQ(checkpoint.tensors.at("model.layers.3.self_attn.k_proj.weight").sizes(), at::IntArrayRef({64, 64}));
}

TEST(Llama2c, UnsharedClassifierIsReadFromTheEnd) {
  // A tiny synthetic llama2.c file with vocab_size negated: wcls follows freq_cis.
  const int32_t dim = 4, hidden = 6, layers = 1, heads = 2, kv_heads = 1, vocab = 3, seq_len = 2;
  const int64_t hd = dim / heads, kv_dim = kv_heads * hd;
  const int64_t body = vocab * dim + layers * (dim + dim * dim + 2 * kv_dim * dim + dim * dim + dim + 3 * hidden * dim) +
                       dim + seq_len * hd;
  int32_t header[7] = {dim, hidden, layers, heads, kv_heads, -vocab, seq_len};
  std::vector<float> floats(body + vocab * dim);
  for (size_t i = 0; i < floats.size(); ++i) floats[i] = static_cast<float>(i);
  std::string bytes(reinterpret_cast<const char*>(header), sizeof(header));
  bytes.append(reinterpret_cast<const char*>(floats.data()), floats.size() * sizeof(float));
  fs::path path = rc::test::scratch_dir("io-llama2c-wcls") / "model.bin";
  write_bytes(path, bytes);

  Checkpoint checkpoint = rc::load_checkpoint(path, at::kFloat);
  EXPECT_FALSE(checkpoint.config.tie_word_embeddings);
  EXPECT_EQ(checkpoint.config.vocab_size, vocab);
  const at::Tensor& lm_head = checkpoint.tensors.at("lm_head.weight");
  EXPECT_FLOAT_EQ(lm_head[0][0].item<float>(), static_cast<float>(body));
  EXPECT_FLOAT_EQ(lm_head[2][3].item<float>(), static_cast<float>(body + vocab * dim - 1));
}

// ---- 3. safetensors round trip -------------------------------------------------------------------

TEST(Safetensors, RoundTripKeepsValuesDtypesAndShapes) {
  fs::path path = rc::test::scratch_dir("io-roundtrip") / "tensors.safetensors";
  std::map<std::string, at::Tensor> tensors = {
      {"f32", at::randn({3, 5}, at::kFloat)},
      {"f16", at::randn({7}, at::kFloat).to(at::kHalf)},
      {"bf16", at::randn({2, 3, 1}, at::kFloat).to(at::kBFloat16)},
      {"i64", at::arange(-4, 6, at::kLong).view({2, 5})},
      {"empty", at::empty({0, 4}, at::kFloat)},
      {"transposed", at::randn({4, 3}, at::kFloat).t()},  // non-contiguous input
  };
  rc::write_safetensors(path, tensors, {{"format", "pt"}});

  std::string bytes = rc::read_file(path);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ((8 + header_size) % 8, 0u) << "data section must start 8-byte aligned";

  rc::SafetensorsFile file = rc::SafetensorsFile::open(path);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  ASSERT_EQ(file.entries().size(), tensors.size());
  EXPECT_EQ(file.entries().at("bf16").dtype, "BF16");
  EXPECT_EQ(file.entries().at("f16").dtype, "F16");
  EXPECT_EQ(file.entries().at("i64").dtype, "I64");
  for (const auto& [name, original] : tensors) {
    at::Tensor loaded = file.tensor(name, original.scalar_type());
    EXPECT_EQ(loaded.scalar_type(), original.scalar_type()) << name;
    EXPECT_EQ(loaded.sizes(), original.sizes()) << name;
    EXPECT_TRUE(loaded.equal(original)) << name;
  }
  // Stored half precision converts to float32 exactly.
  EXPECT_TRUE(file.tensor("f16", at::kFloat).equal(tensors.at("f16").to(at::kFloat)));
  EXPECT_TRUE(file.tensor("bf16", at::kFloat).equal(tensors.at("bf16").to(at::kFloat)));
  EXPECT_EQ(file.tensor("bf16", at::kFloat).scalar_type(), at::kFloat);
}

TEST(Safetensors, MisalignedDataIsCopiedOut) {
  // Header length 9 (not a multiple of 8), as a careless writer might produce, with an F32 tensor.
  fs::path dir = rc::test::scratch_dir("io-misaligned");
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  float values[2] = {1.5f, -2.25f};
  std::string bytes = u64_le(header.size()) + header + std::string(reinterpret_cast<const char*>(values), 8);
  ASSERT_NE((8 + header.size()) % 4, 0u);
  write_bytes(dir / "x.safetensors", bytes);
  at::Tensor x = rc::SafetensorsFile::open(dir / "x.safetensors").tensor("x", at::kFloat);
  EXPECT_FLOAT_EQ(x[0].item<float>(), 1.5f);
  EXPECT_FLOAT_EQ(x[1].item<float>(), -2.25f);
}

TEST(Safetensors, Bf16CopyOfTinyGpt2LoadsAsRoundedFloat32) {
  ROME_REQUIRE_SHARED();
  Checkpoint original = rc::load_checkpoint(rc::test::shared_path("reference/tiny-gpt2"), at::kFloat);
  fs::path dir = rc::test::scratch_dir("io-bf16");
  std::map<std::string, at::Tensor> bf16;
  for (const auto& [name, tensor] : original.tensors) bf16[name] = tensor.to(at::kBFloat16);
  rc::write_safetensors(dir / "model.safetensors", bf16);
  fs::copy_file(rc::test::shared_path("reference/tiny-gpt2/config.json"), dir / "config.json");

  Checkpoint loaded = rc::load_checkpoint(dir, at::kFloat);
  ASSERT_EQ(loaded.tensors.size(), original.tensors.size());
  bool any_rounded = false;
  for (const auto& [name, tensor] : original.tensors) {
    const at::Tensor& got = loaded.tensors.at(name);
    EXPECT_EQ(got.scalar_type(), at::kFloat) << name;
    EXPECT_TRUE(got.equal(tensor.to(at::kBFloat16).to(at::kFloat))) << name;
    any_rounded |= !got.equal(tensor);
  }
  EXPECT_TRUE(any_rounded) << "bf16 rounding should change some float32 weights";

  Checkpoint as_bf16 = rc::load_checkpoint(dir, at::kBFloat16);
  EXPECT_EQ(as_bf16.tensors.at("transformer.wte.weight").scalar_type(), at::kBFloat16);
}

// ---- 4. sharded checkpoints ----------------------------------------------------------------------

TEST(Sharded, TwoShardsEqualTheSingleFile) {
  ROME_REQUIRE_SHARED();
  Checkpoint single = rc::load_checkpoint(rc::test::shared_path("reference/tiny-gpt2"), at::kFloat);
  fs::path dir = rc::test::scratch_dir("io-sharded");
  std::map<std::string, at::Tensor> shards[2];
  nlohmann::json weight_map = nlohmann::json::object();
  size_t index = 0;
  for (const auto& [name, tensor] : single.tensors) {
    size_t shard = index++ < single.tensors.size() / 2 ? 0 : 1;
    shards[shard][name] = tensor;
    weight_map[name] = "model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors";
  }
  rc::write_safetensors(dir / "model-00001-of-00002.safetensors", shards[0]);
  rc::write_safetensors(dir / "model-00002-of-00002.safetensors", shards[1]);
  nlohmann::json index_json = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
  rc::write_file_atomic(dir / "model.safetensors.index.json", index_json.dump(2));
  fs::copy_file(rc::test::shared_path("reference/tiny-gpt2/config.json"), dir / "config.json");

  Checkpoint sharded = rc::load_checkpoint(dir, at::kFloat);
  EXPECT_EQ(sharded.format, "safetensors-sharded");
  EXPECT_EQ(sharded.keepalive.size(), 2u);  // each shard mapped once
  expect_same_tensors(single, sharded);

  // A name the index promises but the shard lacks is reported against that shard.
  weight_map["transformer.extra.weight"] = "model-00001-of-00002.safetensors";
  rc::write_file_atomic(dir / "model.safetensors.index.json", nlohmann::json{{"weight_map", weight_map}}.dump());
  std::string message = input_error_of([&] { rc::load_checkpoint(dir, at::kFloat); });
  EXPECT_MESSAGE_HAS(message, "model-00001-of-00002.safetensors");
  EXPECT_MESSAGE_HAS(message, "transformer.extra.weight");
}

// ---- 5. malformed inputs -------------------------------------------------------------------------

class Malformed : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = rc::test::scratch_dir("io-malformed"); }
  std::string open_error(const fs::path& path) {
    return input_error_of([&] { rc::SafetensorsFile::open(path); });
  }
  fs::path dir_;
};

TEST_F(Malformed, EmptyFile) {
  fs::path path = dir_ / "empty.safetensors";
  write_bytes(path, "");
  std::string message = open_error(path);
  EXPECT_MESSAGE_HAS(message, path.string());
  EXPECT_MESSAGE_HAS(message, "empty");
}

TEST_F(Malformed, ShorterThanHeaderLength) {
  fs::path path = dir_ / "short.safetensors";
  write_bytes(path, "abc");
  std::string message = open_error(path);
  EXPECT_MESSAGE_HAS(message, path.string());
  EXPECT_MESSAGE_HAS(message, "too short");
}

TEST_F(Malformed, TruncatedFile) {
  ROME_REQUIRE_SHARED();
  std::string bytes = rc::read_file(rc::test::shared_path("reference/tiny-gpt2/model.safetensors"));
  fs::path path = dir_ / "truncated.safetensors";
  write_bytes(path, bytes.substr(0, bytes.size() - 100));
  std::string message = open_error(path);
  EXPECT_MESSAGE_HAS(message, path.string());
  EXPECT_MESSAGE_HAS(message, "truncated");
}

TEST_F(Malformed, HeaderLengthBeyondFile) {
  fs::path path = dir_ / "long-header.safetensors";
  write_bytes(path, u64_le(1000) + "{}");
  std::string message = open_error(path);
  EXPECT_MESSAGE_HAS(message, path.string());
  EXPECT_MESSAGE_HAS(message, "header length 1000 exceeds the file size");
}

TEST_F(Malformed, HeaderNotJson) {
  fs::path path = write_raw_safetensors(dir_, "not-json.safetensors", "{\"a\": [1, 2", 0);
  std::string message = open_error(path);
  EXPECT_MESSAGE_HAS(message, path.string());
  EXPECT_MESSAGE_HAS(message, "not valid JSON");
  path = write_raw_safetensors(dir_, "array.safetensors", "[1, 2]", 0);
  EXPECT_MESSAGE_HAS(open_error(path), "not a JSON object");
}

TEST_F(Malformed, OffsetsOutsideData) {
  fs::path path = write_raw_safetensors(
      dir_, "outside.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 16);
  std::string message = open_error(path);
  EXPECT_MESSAGE_HAS(message, path.string());
  EXPECT_MESSAGE_HAS(message, "tensor 'w'");
  EXPECT_MESSAGE_HAS(message, "beyond");
}

TEST_F(Malformed, OverlappingTensors) {
  fs::path path = write_raw_safetensors(dir_, "overlap.safetensors",
                                        R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                        16);
  std::string message = open_error(path);
  EXPECT_MESSAGE_HAS(message, path.string());
  EXPECT_MESSAGE_HAS(message, "overlap");
  EXPECT_MESSAGE_HAS(message, "'a'");
  EXPECT_MESSAGE_HAS(message, "'b'");
}

TEST_F(Malformed, UnknownDtype) {
  fs::path path = write_raw_safetensors(
      dir_, "dtype.safetensors", R"({"w":{"dtype":"F8_E9","shape":[4],"data_offsets":[0,4]}})", 4);
  std::string message = open_error(path);
  EXPECT_MESSAGE_HAS(message, path.string());
  EXPECT_MESSAGE_HAS(message, "unknown dtype");
  EXPECT_MESSAGE_HAS(message, "F8_E9");
}

TEST_F(Malformed, NumelTimesDtypeSizeDiffersFromByteRange) {
  fs::path path = write_raw_safetensors(
      dir_, "size.safetensors", R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 24);
  std::string message = open_error(path);
  EXPECT_MESSAGE_HAS(message, path.string());
  EXPECT_MESSAGE_HAS(message, "size mismatch");
  // Overflowing products must be caught, not wrapped around to a small number.
  path = write_raw_safetensors(
      dir_, "overflow.safetensors",
      R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0);
  EXPECT_MESSAGE_HAS(open_error(path), "overflow");
  path = write_raw_safetensors(dir_, "negative.safetensors",
                               R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", 0);
  EXPECT_MESSAGE_HAS(open_error(path), "non-negative");
}

TEST_F(Malformed, MissingTensor) {
  ROME_REQUIRE_SHARED();
  Checkpoint original = rc::load_checkpoint(rc::test::shared_path("reference/tiny-gpt2"), at::kFloat);
  std::map<std::string, at::Tensor> tensors(original.tensors.begin(), original.tensors.end());
  tensors.erase("transformer.h.2.mlp.c_fc.bias");
  rc::write_safetensors(dir_ / "model.safetensors", tensors);
  fs::copy_file(rc::test::shared_path("reference/tiny-gpt2/config.json"), dir_ / "config.json");
  std::string message = input_error_of([&] { rc::load_checkpoint(dir_, at::kFloat); });
  EXPECT_MESSAGE_HAS(message, (dir_ / "model.safetensors").string());
  EXPECT_MESSAGE_HAS(message, "missing tensor 'transformer.h.2.mlp.c_fc.bias' required by GPT-2");
}

TEST_F(Malformed, ShapeInconsistentWithConfig) {
  ROME_REQUIRE_SHARED();
  fs::path dir = copy_reference("tiny-gpt2", "io-malformed-shape");
  nlohmann::json config = nlohmann::json::parse(rc::read_file(dir / "config.json"));
  config["n_embd"] = 128;
  rc::write_file_atomic(dir / "config.json", config.dump(2));
  std::string message = input_error_of([&] { rc::load_checkpoint(dir, at::kFloat); });
  EXPECT_MESSAGE_HAS(message, (dir / "model.safetensors").string());
  EXPECT_MESSAGE_HAS(message, "tensor 'transformer.wte.weight' has shape [50257, 64] but config.json implies [50257, 128]");
}

TEST_F(Malformed, UnknownModelType) {
  ROME_REQUIRE_SHARED();
  fs::path dir = copy_reference("tiny-gpt2", "io-malformed-type");
  nlohmann::json config = nlohmann::json::parse(rc::read_file(dir / "config.json"));
  config["model_type"] = "mamba";
  rc::write_file_atomic(dir / "config.json", config.dump(2));
  std::string message = input_error_of([&] { rc::load_checkpoint(dir, at::kFloat); });
  EXPECT_MESSAGE_HAS(message, (dir / "config.json").string());
  EXPECT_MESSAGE_HAS(message, "model_type");
  EXPECT_MESSAGE_HAS(message, "mamba");
  EXPECT_MESSAGE_HAS(message, "llama");  // lists the supported types
}

TEST_F(Malformed, PickleCheckpointIsRefused) {
  write_bytes(dir_ / "config.json", R"({"model_type": "gpt2"})");
  write_bytes(dir_ / "pytorch_model.bin", std::string("\x80\x02}q\x00(X\x05\x00\x00\x00", 12));
  for (const fs::path& target : {dir_, dir_ / "pytorch_model.bin"}) {
    std::string message = input_error_of([&] { rc::load_checkpoint(target, at::kFloat); });
    EXPECT_MESSAGE_HAS(message, (dir_ / "pytorch_model.bin").string());
    EXPECT_MESSAGE_HAS(message, "pickle");
    EXPECT_MESSAGE_HAS(message, "safetensors");
    EXPECT_MESSAGE_HAS(message, "safe_serialization=True");
  }
  // A pickle under another name is detected by its bytes.
  write_bytes(dir_ / "weights.pt", std::string("\x80\x04\x95", 3));
  EXPECT_MESSAGE_HAS(input_error_of([&] { rc::load_checkpoint(dir_ / "weights.pt", at::kFloat); }), "pickle");
}

TEST_F(Malformed, TruncatedLlama2c) {
  ROME_REQUIRE_SHARED();
  std::string bytes = rc::read_file(rc::test::shared_path("models/stories260K/stories260K.bin"));
  fs::path path = dir_ / "stories-truncated.bin";
  write_bytes(path, bytes.substr(0, bytes.size() - 100));
  std::string message = input_error_of([&] { rc::load_checkpoint(path, at::kFloat); });
  EXPECT_MESSAGE_HAS(message, path.string());
  EXPECT_MESSAGE_HAS(message, "truncated");

  write_bytes(path, bytes + "xxxx");
  EXPECT_MESSAGE_HAS(input_error_of([&] { rc::load_checkpoint(path, at::kFloat); }), "4 extra bytes");
}

TEST_F(Malformed, Llama2cBadHeader) {
  auto header_file = [&](std::vector<int32_t> header) {
    fs::path path = dir_ / "bad-header.bin";
    write_bytes(path, std::string(reinterpret_cast<const char*>(header.data()), header.size() * 4));
    return input_error_of([&] { rc::load_checkpoint(path, at::kFloat); });
  };
  EXPECT_MESSAGE_HAS(header_file({64, 172, 0, 8, 4, 512, 512}), "n_layers");
  EXPECT_MESSAGE_HAS(header_file({64, 172, 5, 7, 7, 512, 512}), "not divisible by n_heads");
  EXPECT_MESSAGE_HAS(header_file({64, 172, 5, 8, 3, 512, 512}), "not divisible by n_kv_heads");
}

TEST(Config, FieldErrorsNameFileAndField) {
  auto error_of = [](const nlohmann::json& json) {
    return input_error_of([&] { rc::parse_hf_config(json, "/models/x/config.json"); });
  };
  std::string message = error_of({{"model_type", "llama"}, {"hidden_size", 64}});
  EXPECT_MESSAGE_HAS(message, "/models/x/config.json");
  EXPECT_MESSAGE_HAS(message, "num_hidden_layers");
  message = error_of({{"model_type", "gpt2"}, {"n_embd", "64"}});
  EXPECT_MESSAGE_HAS(message, "n_embd");
  EXPECT_MESSAGE_HAS(error_of({{"vocab_size", 3}}), "model_type");
}

TEST(Config, LlamaDefaultsAndTopLevelRopeTheta) {
  nlohmann::json json = {{"model_type", "llama"},   {"hidden_size", 64},          {"num_hidden_layers", 2},
                         {"num_attention_heads", 8}, {"intermediate_size", 100},  {"max_position_embeddings", 32},
                         {"vocab_size", 10},         {"rope_theta", 500000.0},    {"eos_token_id", {2, 7}},
                         {"bos_token_id", nullptr}};
  rc::ModelConfig config = rc::parse_hf_config(json, "config.json");
  EXPECT_EQ(config.n_kv_heads, 8);
  EXPECT_EQ(config.head_dim, 8);
  EXPECT_EQ(config.rotary_dim, 8);
  EXPECT_DOUBLE_EQ(config.rope_theta, 500000.0);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_FALSE(config.bos_token_id.has_value());
  EXPECT_EQ(config.eos_token_id, 2);
}
