// Architectures as data: config.json spellings and refusals per family, the checkpoint check of a
// new family (missing, extra, misshaped tensors; real-checkpoint name variants), random weights
// and the benchmark shapes, all read from the same ArchitectureSpec.
#include <functional>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/io/safetensors.h"
#include "rome_collapse/model/architecture.h"
#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/model/checkpoint.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace rc {
namespace {

namespace fs = std::filesystem;

nlohmann::json reference_config(const std::string& family) {
  return nlohmann::json::parse(read_file(test::shared_path("reference/" + family + "/config.json")));
}

ModelConfig parse(const nlohmann::json& json) { return parse_hf_config(json, "/m/config.json"); }

void expect_refused(const nlohmann::json& json, const std::vector<std::string>& needles) {
  test::expect_input_error([&] { parse(json); }, needles);
}

TEST(ArchitectureConfig, BothRopeSpellingsOfLlama3AreTheSameModel) {
  ROME_REQUIRE_SHARED();
  nlohmann::json v4 = reference_config("llama3");  // transformers 4: rope_theta + rope_scaling
  nlohmann::json v5 = v4;                          // transformers 5: rope_parameters
  v5.erase("rope_theta");
  v5.erase("rope_scaling");
  v5["rope_parameters"] = v4["rope_scaling"];
  v5["rope_parameters"]["rope_theta"] = v4["rope_theta"];
  for (const auto& json : {v4, v5}) {
    ModelConfig config = parse(json);
    EXPECT_EQ(config.arch, Architecture::Llama);
    EXPECT_DOUBLE_EQ(config.rope_theta, 500000.0);
    EXPECT_TRUE(config.rope_scaling.llama3);
    EXPECT_DOUBLE_EQ(config.rope_scaling.factor, 8.0);
    EXPECT_DOUBLE_EQ(config.rope_scaling.low_freq_factor, 1.0);
    EXPECT_DOUBLE_EQ(config.rope_scaling.high_freq_factor, 4.0);
    EXPECT_EQ(config.rope_scaling.original_max_positions, 64);
    EXPECT_EQ(config.activation, Activation::Silu);
  }
}

TEST(ArchitectureConfig, NeoXRotaryFractionAndBaseInEverySpelling) {
  ROME_REQUIRE_SHARED();
  nlohmann::json both = reference_config("gpt_neox");
  nlohmann::json old_names = both, new_names = both, v5 = both;
  for (const char* f : {"partial_rotary_factor", "rope_theta"}) old_names.erase(f);
  for (const char* f : {"rotary_pct", "rotary_emb_base"}) new_names.erase(f);
  for (const char* f : {"partial_rotary_factor", "rope_theta", "rotary_pct", "rotary_emb_base", "rope_scaling"}) v5.erase(f);
  v5["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000}, {"partial_rotary_factor", 0.25}};
  for (const auto& json : {both, old_names, new_names, v5}) {
    ModelConfig config = parse(json);
    EXPECT_EQ(config.arch, Architecture::GptNeoX);
    EXPECT_EQ(config.head_dim, 16);
    EXPECT_EQ(config.rotary_dim, 4);
    EXPECT_DOUBLE_EQ(config.rope_theta, 10000.0);
    EXPECT_TRUE(config.parallel_residual);
    EXPECT_TRUE(config.attention_bias);
    EXPECT_FALSE(config.tie_word_embeddings);
    EXPECT_EQ(config.activation, Activation::Gelu);
  }
  nlohmann::json sequential = both;
  sequential["use_parallel_residual"] = false;
  EXPECT_FALSE(parse(sequential).parallel_residual);
  nlohmann::json odd = both;
  odd["rotary_pct"] = 0.3;  // 16 * 0.3 = 4.8 -> 4 (int(), as transformers)
  EXPECT_EQ(parse(odd).rotary_dim, 4);
  odd["rotary_pct"] = 0.1;  // 1 dim: not a rotation
  expect_refused(odd, {"/m/config.json", "'rotary_pct'"});
}

TEST(ArchitectureConfig, FamilyVariantsFromConfig) {
  ROME_REQUIRE_SHARED();
  ModelConfig opt = parse(reference_config("opt"));
  EXPECT_EQ(opt.arch, Architecture::Opt);
  EXPECT_EQ(opt.activation, Activation::Relu);
  EXPECT_TRUE(opt.attention_bias && opt.mlp_bias && opt.tie_word_embeddings);
  EXPECT_EQ(dimension(Dim::PositionRows, opt), 258);  // max_position_embeddings + OPT's offset of 2

  ModelConfig qwen2 = parse(reference_config("qwen2"));
  EXPECT_EQ(qwen2.sliding_window, 0);  // use_sliding_window false
  nlohmann::json windowed = reference_config("qwen2");
  windowed["use_sliding_window"] = true;
  windowed["sliding_window"] = 16;
  windowed["max_window_layers"] = 2;
  qwen2 = parse(windowed);
  EXPECT_EQ(qwen2.sliding_window, 16);
  EXPECT_EQ(qwen2.sliding_window_from_layer, 2);

  ModelConfig mistral = parse(reference_config("mistral"));
  EXPECT_EQ(mistral.sliding_window, 8);
  EXPECT_EQ(mistral.n_kv_heads, 2);
  nlohmann::json no_window = reference_config("mistral");
  no_window["sliding_window"] = nullptr;
  EXPECT_EQ(parse(no_window).sliding_window, 0);
}

// Issue 17 item 8: an activation the decoder does not implement is refused by field and value,
// never silently replaced by another.
TEST(ArchitectureConfig, UnknownActivationIsRefusedNamingFieldAndValue) {
  ROME_REQUIRE_SHARED();
  nlohmann::json gpt2 = nlohmann::json::parse(read_file(test::shared_path("reference/tiny-gpt2/config.json")));
  gpt2["activation_function"] = "quick_gelu";
  expect_refused(gpt2, {"/m/config.json", "'activation_function'", "quick_gelu", "gelu_new"});
  nlohmann::json llama = reference_config("llama3");
  llama["hidden_act"] = "gelu_10";
  expect_refused(llama, {"'hidden_act'", "gelu_10"});
  llama["hidden_act"] = 3;
  expect_refused(llama, {"'hidden_act'", "string"});
  nlohmann::json gptj = nlohmann::json::parse(read_file(test::shared_path("reference/tiny-gptj/config.json")));
  gptj["activation_function"] = "tanh";
  expect_refused(gptj, {"'activation_function'", "tanh"});
}

TEST(ArchitectureConfig, UnsupportedVariantsAreRefusedByName) {
  ROME_REQUIRE_SHARED();
  nlohmann::json opt = reference_config("opt");
  opt["do_layer_norm_before"] = false;  // opt-350m
  expect_refused(opt, {"/m/config.json", "'do_layer_norm_before'", "false"});
  opt = reference_config("opt");
  opt["word_embed_proj_dim"] = 32;
  expect_refused(opt, {"'word_embed_proj_dim'"});

  nlohmann::json llama = reference_config("llama3");
  llama["rope_scaling"]["rope_type"] = "yarn";
  expect_refused(llama, {"'rope_scaling.rope_type'", "yarn"});
  llama = reference_config("llama3");
  llama.erase("rope_scaling");
  llama["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  expect_refused(llama, {"'rope_parameters.rope_type'", "linear"});
  llama = reference_config("llama3");
  llama["rope_scaling"].erase("low_freq_factor");
  expect_refused(llama, {"'rope_scaling.low_freq_factor'", "missing"});
  nlohmann::json mistral = reference_config("mistral");
  mistral["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  expect_refused(mistral, {"'rope_scaling.type'", "dynamic"});
  nlohmann::json unknown = reference_config("opt");
  unknown["model_type"] = "falcon";
  expect_refused(unknown, {"'model_type'", "falcon", "gpt_neox", "opt", "qwen2", "mistral"});
}

// ---- checkpoints -------------------------------------------------------------------------------

// A copy of reference/<family> whose tensors `edit` changed.
fs::path edited_copy(const std::string& family, const std::string& name,
                     const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  fs::path dir = test::scratch_dir("arch-" + name);
  fs::copy_file(test::shared_path("reference/" + family + "/config.json"), dir / "config.json");
  SafetensorsFile file = SafetensorsFile::open(test::shared_path("reference/" + family + "/model.safetensors"));
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [tensor_name, entry] : file.entries()) tensors[tensor_name] = file.tensor(tensor_name, at::kFloat).clone();
  edit(tensors);
  write_safetensors(dir / "model.safetensors", tensors);
  return dir;
}

void expect_checkpoint_refused(const fs::path& dir, const std::vector<std::string>& needles) {
  test::expect_input_error([&] { load_checkpoint(dir, at::kFloat); }, needles);
}

TEST(ArchitectureCheckpoint, NewFamilyMissingExtraAndMisshapedTensorsAreRefusedByName) {
  ROME_REQUIRE_SHARED();
  auto missing = edited_copy("qwen2", "missing", [](auto& t) { t.erase("model.layers.2.mlp.up_proj.weight"); });
  expect_checkpoint_refused(missing, {"model.safetensors", "missing tensor 'model.layers.2.mlp.up_proj.weight'", "Qwen2"});

  auto extra = edited_copy("qwen2", "extra", [](auto& t) { t["model.layers.1.self_attn.o_proj.bias"] = at::zeros({64}); });
  expect_checkpoint_refused(extra, {"model.safetensors", "unexpected tensor 'model.layers.1.self_attn.o_proj.bias'"});

  auto misshaped = edited_copy("qwen2", "misshaped", [](auto& t) { t["model.layers.0.self_attn.k_proj.bias"] = at::zeros({33}); });
  expect_checkpoint_refused(misshaped, {"tensor 'model.layers.0.self_attn.k_proj.bias' has shape [33]",
                                        "config.json implies [32]"});

  auto fused = edited_copy("gpt_neox", "fused", [](auto& t) {
    t["gpt_neox.layers.3.attention.query_key_value.weight"] = at::zeros({191, 64});
  });
  expect_checkpoint_refused(fused, {"'gpt_neox.layers.3.attention.query_key_value.weight' has shape [191, 64]", "[192, 64]"});
}

// Real checkpoints: OPT files naming tensors "decoder.*", old Pythia files with mask and rotary
// buffers. Both load, and give the reference file's logits.
TEST(ArchitectureCheckpoint, RealCheckpointNameVariantsLoad) {
  ROME_REQUIRE_SHARED();
  auto same_logits = [](const std::string& family, const fs::path& variant) {
    auto reference = load_causal_lm(test::shared_path("reference/" + family));
    auto model = load_causal_lm(variant);
    at::Tensor ids = at::tensor(std::vector<int64_t>{464, 2068, 7586, 21831}, at::kLong).unsqueeze(0);
    at::NoGradGuard no_grad;
    EXPECT_TRUE(at::equal(model->forward(ids).logits, reference->forward(ids).logits)) << family;
  };
  auto opt = edited_copy("opt", "opt-unprefixed", [](auto& t) {
    std::map<std::string, at::Tensor> renamed;
    for (auto& [name, tensor] : t) renamed[name.rfind("model.", 0) == 0 ? name.substr(6) : name] = tensor;
    t = renamed;
  });
  same_logits("opt", opt);
  auto pythia = edited_copy("gpt_neox", "pythia-buffers", [](auto& t) {
    for (int layer = 0; layer < 4; ++layer) {
      const std::string p = "gpt_neox.layers." + std::to_string(layer) + ".attention.";
      t[p + "bias"] = at::ones({1, 1, 256, 256});
      t[p + "masked_bias"] = at::full({}, -1e9);
      t[p + "rotary_emb.inv_freq"] = at::ones({2});
    }
  });
  same_logits("gpt_neox", pythia);
}

// ---- random weights and benchmark shapes -------------------------------------------------------

int64_t parameter_count(const ModelConfig& config) {
  int64_t count = 0;
  for (const TensorSpec& tensor : architecture_spec(config.arch).tensors) {
    if (!tensor_present(tensor, config)) continue;
    int64_t numel = 1;
    for (int64_t d : tensor_shape(tensor, config)) numel *= d;
    count += numel * (is_per_layer(tensor) ? config.n_layers : 1);
  }
  return count;
}

TEST(ModelShapes, NewShapesHaveTheRealModelsParameterCounts) {
  struct Expected {
    const char* name;
    Architecture arch;
    int64_t layers, kv_heads, rotary_dim, parameters;  // parameters as the model cards count them
  };
  for (const Expected& e : {Expected{"llama3-8b", Architecture::Llama, 32, 8, 128, 8030261248},
                            Expected{"qwen2.5-7b", Architecture::Qwen2, 28, 4, 128, 7615616512},
                            Expected{"mistral-7b", Architecture::Mistral, 32, 8, 128, 7241732096},
                            Expected{"pythia-6.9b", Architecture::GptNeoX, 32, 32, 32, 6857302016}}) {
    ModelConfig config = model_shape(e.name);
    EXPECT_EQ(config.arch, e.arch) << e.name;
    EXPECT_EQ(config.n_layers, e.layers) << e.name;
    EXPECT_EQ(config.n_kv_heads, e.kv_heads) << e.name;
    EXPECT_EQ(config.rotary_dim, e.rotary_dim) << e.name;
    EXPECT_FALSE(config.tie_word_embeddings) << e.name;
    EXPECT_EQ(parameter_count(config), e.parameters) << e.name;
  }
  EXPECT_EQ(model_shape("mistral-7b").sliding_window, 4096);
  EXPECT_TRUE(model_shape("pythia-6.9b").parallel_residual);
  EXPECT_EQ(model_shape("qwen2.5-7b").sliding_window, 0);
  EXPECT_THROW(model_shape("pythia-12b"), InputError);
}

// Every family's random checkpoint passes the checkpoint check it shares the spec with, and runs.
TEST(ModelShapes, RandomCheckpointOfEveryFamilyIsValid) {
  for (const ArchitectureSpec& spec : architecture_specs()) {
    ModelConfig config = default_config(spec.arch);
    config.vocab_size = 50, config.d_model = 16, config.n_layers = 2, config.n_heads = 4, config.n_kv_heads = 2;
    if (spec.qkv != QkvLayout::Separate) config.n_kv_heads = 4;  // fused layouts have no grouped-query form
    config.head_dim = 4, config.d_ff = 24, config.max_positions = 32;
    config.rotary_dim = spec.positions == PositionScheme::Rotary ? 4 : 0;
    for (bool tied : {true, false}) {
      config.tie_word_embeddings = tied;
      Checkpoint checkpoint = random_checkpoint(config, 7);
      EXPECT_NO_THROW(validate_checkpoint(checkpoint)) << spec.model_type;
      auto model = build_causal_lm(checkpoint);
      at::NoGradGuard no_grad;
      at::Tensor logits = model->forward(at::arange(6, at::kLong).unsqueeze(0)).logits;
      EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{1, 6, 50})) << spec.model_type;
      EXPECT_TRUE(logits.isfinite().all().item<bool>()) << spec.model_type;
    }
  }
}

}  // namespace
}  // namespace rc
