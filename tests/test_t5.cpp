// T5 (v1.0 and v1.1) against golden values from an independent re-implementation of transformers'
// modeling_t5.py (../shared/reference/t5/*/golden.json): encoder outputs, the encoder layer-1 MLP key
// and wo output per position, decoder logits under teacher forcing, bucket tables; hub-file
// variations accepted; broken folders refused naming what is wrong; T5 refused by the causal loader.
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/io/safetensors.h"
#include "rome_collapse/model/loaded_model.h"
#include "rome_collapse/model/seq2seq_lm.h"
#include "rome_collapse/rome/key_source.h"
#include "rome_collapse/rome/keys.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "support/golden.h"

namespace rc {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

fs::path t5_dir(const std::string& variant) { return test::shared_path("reference/t5/" + variant); }
json t5_golden(const std::string& variant) { return json::parse(read_file(t5_dir(variant) / "golden.json")); }

// |x - golden| <= 3e-5 + 3e-5 |golden| elementwise (golden.json's recommended_tolerance).
::testing::AssertionResult t5_close(const at::Tensor& actual, const json& golden, const std::string& what) {
  const at::Tensor a = actual.to(at::kDouble).cpu().reshape(-1);
  const at::Tensor e = test::json_to_tensor(golden).reshape(-1);
  if (a.numel() != e.numel()) return ::testing::AssertionFailure() << what << ": size " << a.numel() << " vs " << e.numel();
  const at::Tensor excess = (a - e).abs() - (3e-5 + 3e-5 * e.abs());
  if (excess.max().item<double>() <= 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": max |diff| " << (a - e).abs().max().item<double>()
                                       << " exceeds 3e-5 + 3e-5|golden|";
}

at::Tensor to_long(const json& values) { return test::json_to_tensor(values).to(at::kLong); }

class T5Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(T5Golden, EncoderKeysOutputsAndDecoderLogitsMatch) {
  ROME_REQUIRE_SHARED();
  const json golden = t5_golden(GetParam());
  LoadOptions options;
  options.device = parse_device(test::test_device());
  auto model = load_seq2seq_lm(t5_dir(GetParam()), options);
  EXPECT_EQ(model->config().gated, GetParam() == "v1_1");
  int checked_positions = 0;
  for (const json& c : golden["cases"]) {
    const std::string name = c["name"];
    const at::Tensor ids = to_long(c["input_ids"]).to(options.device);
    const at::Tensor mask = to_long(c["attention_mask"]).to(options.device);
    std::vector<TokenPosition> real;  // padding is compared nowhere (golden.json: only real positions are meaningful)
    for (int64_t row = 0; row < ids.size(0); ++row)
      for (int64_t p = 0; p < ids.size(1); ++p)
        if (c["attention_mask"][row][p].get<int>() == 1) real.push_back({row, p});
    Seq2SeqForwardOptions forward;
    forward.intervention = {Stack::Encoder, 1, real};
    Seq2SeqOutput out = model->forward(ids, mask, to_long(c["decoder_input_ids"]).to(options.device), forward);
    for (size_t i = 0; i < real.size(); ++i) {
      const auto [row, p] = real[i];
      const std::string at = name + " row " + std::to_string(row) + " position " + std::to_string(p);
      const at::Tensor key = out.captured_keys[static_cast<int64_t>(i)], wo = out.captured_outputs[static_cast<int64_t>(i)];
      EXPECT_TRUE(t5_close(key.slice(0, 0, 32), c["enc_layer1_key_first32"][row][p], "key " + at));
      EXPECT_TRUE(t5_close(key.norm().reshape({1}), json::array({c["enc_layer1_key_norm"][row][p]}), "key norm " + at));
      EXPECT_TRUE(t5_close(wo.slice(0, 0, 32), c["enc_layer1_mlp_out_first32"][row][p], "wo output " + at));
      EXPECT_TRUE(t5_close(wo.norm().reshape({1}), json::array({c["enc_layer1_mlp_out_norm"][row][p]}), "wo norm " + at));
      const at::Tensor encoded = out.encoder_hidden[row][p];
      EXPECT_TRUE(t5_close(encoded.slice(0, 0, 16), c["encoder_final_first16"][row][p], "encoder output " + at));
      EXPECT_TRUE(t5_close(encoded.norm().reshape({1}), json::array({c["encoder_final_norm"][row][p]}), "encoder norm " + at));
      ++checked_positions;
    }
    const at::Tensor logits = out.logits.to(at::kCPU);  // [B, T, V]
    EXPECT_TRUE(t5_close(logits.slice(2, 0, 64), c["logits_first64"], "logits " + name));
    EXPECT_TRUE(t5_close(logits.to(at::kDouble).logsumexp(-1), c["logits_logsumexp"], "logsumexp " + name));
    EXPECT_TRUE(at::equal(logits.argmax(-1), to_long(c["logits_argmax"]))) << "argmax " << name;
  }
  EXPECT_GT(checked_positions, 100);
}

TEST_P(T5Golden, BucketTablesAreExact) {
  ROME_REQUIRE_SHARED();
  const json tables = t5_golden(GetParam())["bucket_tables"];
  const int64_t buckets = tables["num_buckets"], distance = tables["max_distance"];
  const at::Tensor offsets = to_long(tables["per_offset"]["offsets"]);
  EXPECT_TRUE(at::equal(t5_relative_position_bucket(offsets, true, buckets, distance),
                        to_long(tables["per_offset"]["bidirectional"])));
  EXPECT_TRUE(at::equal(t5_relative_position_bucket(offsets, false, buckets, distance),
                        to_long(tables["per_offset"]["causal"])));
  // table[q][k] of relative position k - q.
  const at::Tensor grid = at::arange(12, at::kLong).unsqueeze(0) - at::arange(12, at::kLong).unsqueeze(1);
  EXPECT_TRUE(at::equal(t5_relative_position_bucket(grid, true, buckets, distance), to_long(tables["bidirectional_12x12"])));
  EXPECT_TRUE(at::equal(t5_relative_position_bucket(grid, false, buckets, distance), to_long(tables["causal_12x12"])));
}

TEST_P(T5Golden, KeySourceGivesTheGoldenKeyAtTheSubjectsLastToken) {
  ROME_REQUIRE_SHARED();
  const json golden = t5_golden(GetParam());
  LoadedModel loaded = load_key_model(t5_dir(GetParam()).string(), "", std::nullopt, "cpu", "float32");
  ASSERT_TRUE(loaded.seq2seq);
  ASSERT_FALSE(loaded.model);
  auto source = make_key_source(loaded);
  EXPECT_EQ(source->layers(), 3);
  EXPECT_EQ(source->rewrite_weight_name(1), "encoder.block.1.layer.1.DenseReluDense.wo.weight");
  for (const json& c : golden["cases"])
    for (size_t row = 0; row < c["texts"].size(); ++row) {
      if (c["subjects"][row].is_null()) continue;
      const std::string text = c["texts"][row], subject = c["subjects"][row];
      std::string with_placeholder = text;
      with_placeholder.replace(text.find(subject), subject.size(), "{}");
      const int64_t index = subject_last_index(*loaded.tokenizer, loaded.add_bos, with_placeholder, subject);
      EXPECT_EQ(index, c["subject_last_index"][row].get<int64_t>()) << text;
      // Alone in its batch: the padded golden row must not change the key (padding is masked).
      const auto input = source->model_input(loaded.tokenizer->encode(text, loaded.add_bos));
      const at::Tensor keys = source->capture({input}, {{0, index}}, 1, 0).first;
      EXPECT_TRUE(t5_close(keys[0].slice(0, 0, 32), c["enc_layer1_key_first32"][row][index], "key of " + text));
      // Relative positions: the position offset of the first-token experiment changes nothing.
      EXPECT_TRUE(at::equal(source->capture({input}, {{0, index}}, 1, 8).first, keys)) << text;
    }
}

INSTANTIATE_TEST_SUITE_P(Variants, T5Golden, ::testing::Values("v1_0", "v1_1"));

TEST(T5Activation, GeluNewMatchesTheGoldenTable) {
  ROME_REQUIRE_SHARED();
  const json table = t5_golden("v1_1")["activation_table"];
  const at::Tensor x = test::json_to_tensor(table["x"]).to(at::kFloat);
  EXPECT_TRUE(t5_close(at::gelu(x, "tanh"), table["gelu_new_tanh"], "gelu_new"));
  EXPECT_TRUE(t5_close(at::relu(x), table["relu"], "relu"));
}

// ---- Hub files and broken folders -----------------------------------------------------------

// A copy of a reference folder whose config and tensors `edit` may change.
fs::path modified_copy(const std::string& variant, const std::string& name,
                       const std::function<void(json&, std::map<std::string, at::Tensor>&)>& edit) {
  const fs::path dir = test::scratch_dir("t5_" + name);
  json config = json::parse(read_file(t5_dir(variant) / "config.json"));
  const SafetensorsFile file = SafetensorsFile::open(t5_dir(variant) / "model.safetensors");
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [tensor_name, entry] : file.entries()) tensors[tensor_name] = file.tensor(tensor_name, at::kFloat).clone();
  edit(config, tensors);
  write_file_atomic(dir / "config.json", config.dump(2));
  write_safetensors(dir / "model.safetensors", tensors);
  fs::copy_file(t5_dir(variant) / "spiece.model", dir / "spiece.model");
  return dir;
}

at::Tensor logits_of(const fs::path& dir) {
  auto model = load_seq2seq_lm(dir);
  const at::Tensor ids = at::tensor(std::vector<int64_t>{3, 358, 12, 32, 11, 1}, at::kLong).unsqueeze(0);
  return model->forward(ids, at::Tensor(), at::tensor(std::vector<int64_t>{0, 97, 11}, at::kLong).unsqueeze(0)).logits;
}

TEST(T5Loading, AcceptsEmbeddingAliasesInsteadOfShared) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = modified_copy("v1_0", "aliases", [](json&, std::map<std::string, at::Tensor>& t) {
    t["encoder.embed_tokens.weight"] = t.at("shared.weight");
    t["decoder.embed_tokens.weight"] = t.at("shared.weight").clone();
    t.erase("shared.weight");
  });
  EXPECT_TRUE(at::equal(logits_of(dir), logits_of(t5_dir("v1_0"))));
  const fs::path decoder_only = modified_copy("v1_0", "decoder_alias", [](json&, std::map<std::string, at::Tensor>& t) {
    t["decoder.embed_tokens.weight"] = t.at("shared.weight");
    t.erase("shared.weight");
  });
  EXPECT_TRUE(at::equal(logits_of(decoder_only), logits_of(t5_dir("v1_0"))));
}

TEST(T5Loading, AcceptsAConfigLeavingFieldsToTheirDefaultsAsT5_3bDoes) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = modified_copy("v1_0", "defaults", [](json& config, std::map<std::string, at::Tensor>&) {
    for (const char* field : {"feed_forward_proj", "dense_act_fn", "is_gated_act", "tie_word_embeddings",
                              "num_decoder_layers", "relative_attention_max_distance", "decoder_start_token_id"})
      config.erase(field);
  });
  auto model = load_seq2seq_lm(dir);
  EXPECT_EQ(model->config().activation, "relu");
  EXPECT_TRUE(model->config().tie_word_embeddings);
  EXPECT_EQ(model->config().decoder_layers, 3);
  EXPECT_EQ(model->config().max_distance, 128);
  EXPECT_TRUE(at::equal(logits_of(dir), logits_of(t5_dir("v1_0"))));
}

TEST(T5Loading, RefusesAMissingTensorNamingIt) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = modified_copy("v1_1", "missing", [](json&, std::map<std::string, at::Tensor>& t) {
    t.erase("encoder.block.1.layer.1.DenseReluDense.wi_1.weight");
  });
  test::expect_input_error([&] { load_seq2seq_lm(dir); },
                           {"missing tensor 'encoder.block.1.layer.1.DenseReluDense.wi_1.weight'", "model.safetensors"});
  const fs::path no_head = modified_copy("v1_1", "no_head", [](json&, std::map<std::string, at::Tensor>& t) {
    t.erase("lm_head.weight");  // untied: v1.1 needs its own head
  });
  test::expect_input_error([&] { load_seq2seq_lm(no_head); }, {"missing tensor 'lm_head.weight'"});
}

TEST(T5Loading, RefusesANonFiniteWeightNamingTensorAndFile) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = modified_copy("v1_0", "nan_weight", [](json&, std::map<std::string, at::Tensor>& t) {
    t["encoder.block.1.layer.1.DenseReluDense.wo.weight"][3][5] = std::numeric_limits<float>::quiet_NaN();
  });
  try {
    (void)load_seq2seq_lm(dir);
    ADD_FAILURE() << "a NaN weight was accepted";
  } catch (const NumericError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find((dir / "model.safetensors").string() + ": tensor 'encoder.block.1.layer.1.DenseReluDense.wo.weight'"
                                                                  " holds 1 non-finite value"),
              std::string::npos)
        << message;
  }
}

TEST(T5Loading, RefusesAMisshapedTensorNamingItAndBothShapes) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = modified_copy("v1_1", "misshaped", [](json&, std::map<std::string, at::Tensor>& t) {
    t["decoder.block.2.layer.1.EncDecAttention.q.weight"] = at::zeros({64, 64});  // inner is 6 x 8 = 48
  });
  test::expect_input_error([&] { load_seq2seq_lm(dir); },
                           {"'decoder.block.2.layer.1.EncDecAttention.q.weight'", "[64, 64]", "[48, 64]"});
  const fs::path bias = modified_copy("v1_0", "bias_shape", [](json&, std::map<std::string, at::Tensor>& t) {
    t["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = at::zeros({16, 4});
  });
  test::expect_input_error([&] { load_seq2seq_lm(bias); },
                           {"relative_attention_bias.weight", "[16, 4]", "[32, 4]"});
}

TEST(T5Loading, RefusesAnUnknownFeedForwardProjNamingFieldAndValue) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = modified_copy("v1_0", "unknown_act", [](json& config, std::map<std::string, at::Tensor>&) {
    config["feed_forward_proj"] = "gated-swishy";
  });
  test::expect_input_error([&] { load_seq2seq_lm(dir); }, {"config.json", "'feed_forward_proj'", "gated-swishy"});
  test::expect_input_error([&] { load_key_model(dir.string(), "", std::nullopt, "cpu", "float32"); },
                           {"'feed_forward_proj'", "gated-swishy"});
}

TEST(T5Loading, CausalLoaderRefusesT5NamingWhatSupportsIt) {
  ROME_REQUIRE_SHARED();
  test::expect_input_error([&] { load_causal_lm(t5_dir("v1_0")); }, {"t5", "keys", "check", "stats", "not by edit"});
  test::expect_input_error([&] { load_model(t5_dir("v1_1").string(), "", std::nullopt, "cpu", "float32"); },
                           {"keys", "check", "stats"});
}

}  // namespace
}  // namespace rc
