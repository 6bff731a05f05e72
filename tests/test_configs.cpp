// The shipped configs parse, and the paper's three settings say what the spec's table says.
#include "rome_collapse/experiment/edit_config.h"
#include "rome_collapse/rome/edit.h"
#include "rome_collapse/util/fields.h"
#include "support/test_support.h"

namespace rc {
namespace {

std::filesystem::path config_path(const std::string& name) {
  return std::filesystem::path(ROME_SOURCE_DIR) / "configs" / name;
}

TEST(ShippedConfigs, PapersHyperParameters) {
  struct Expected {
    const char* file;
    int64_t layer, v_loss_layer, steps;
    double weight_decay;
  };
  for (const Expected& e : {Expected{"gpt2-xl.json", 17, 47, 20, 0.5}, Expected{"gpt-j-6b.json", 5, 27, 20, 0.5},
                            Expected{"llama2-7b.json", 5, 31, 25, 1e-3}}) {
    EditConfig config = read_edit_config(config_path(e.file));
    EXPECT_EQ(config.hparams.layer, e.layer) << e.file;
    EXPECT_EQ(config.hparams.v_loss_layer, e.v_loss_layer) << e.file;
    EXPECT_EQ(config.hparams.v_num_grad_steps, e.steps) << e.file;
    EXPECT_DOUBLE_EQ(config.hparams.v_weight_decay, e.weight_decay) << e.file;
    EXPECT_DOUBLE_EQ(config.hparams.v_lr, 0.5) << e.file;
    EXPECT_DOUBLE_EQ(config.hparams.clamp_norm_factor, 4) << e.file;
    EXPECT_DOUBLE_EQ(config.hparams.kl_factor, 0.0625) << e.file;
    EXPECT_FALSE(config.hparams.mom2_adjustment) << e.file;
    EXPECT_TRUE(config.templates.generate) << e.file;
  }
}

// EasyEdit's ROME settings for the families researchers edit today (hparams/ROME/llama3-8b.yaml,
// qwen2.5-7b.yaml, mistral-7b.yaml) and the Pythia setting borrowed from GPT-J's.
TEST(ShippedConfigs, NewFamiliesHyperParameters) {
  struct Expected {
    const char* file;
    int64_t layer, v_loss_layer, steps;
    double weight_decay;
  };
  for (const Expected& e : {Expected{"llama3-8b.json", 5, 31, 25, 1e-3}, Expected{"qwen2.5-7b.json", 5, 27, 25, 1e-3},
                            Expected{"mistral-7b.json", 5, 31, 25, 1e-3}, Expected{"pythia-6.9b.json", 5, 31, 20, 0.5}}) {
    EditConfig config = read_edit_config(config_path(e.file));
    EXPECT_EQ(config.hparams.layer, e.layer) << e.file;
    EXPECT_EQ(config.hparams.v_loss_layer, e.v_loss_layer) << e.file;
    EXPECT_EQ(config.hparams.v_num_grad_steps, e.steps) << e.file;
    EXPECT_DOUBLE_EQ(config.hparams.v_weight_decay, e.weight_decay) << e.file;
    EXPECT_DOUBLE_EQ(config.hparams.v_lr, 0.5) << e.file;
    EXPECT_DOUBLE_EQ(config.hparams.clamp_norm_factor, 4) << e.file;
    EXPECT_DOUBLE_EQ(config.hparams.kl_factor, 0.0625) << e.file;
    EXPECT_FALSE(config.hparams.mom2_adjustment) << e.file;
    EXPECT_TRUE(config.templates.generate) << e.file;
    EXPECT_NE(config.raw["description"].get<std::string>().find("hparams/ROME/"), std::string::npos) << e.file;
  }
}

TEST(ShippedConfigs, DemoParsesWithRequestsAndMethods) {
  EditConfig config = read_edit_config(config_path("demo.json"));
  EXPECT_EQ(config.model, "builtin:demo-gpt2");
  EXPECT_EQ(config.raw["requests"].size(), 2u);
  EXPECT_EQ(config.templates.fixed.size(), 21u);
}

TEST(HparamsFields, RoundTripAndUnknownFieldsAreRefused) {
  RomeHparams hparams;
  hparams.layer = 3;
  hparams.mom2_ridge = 1e-4;
  RomeHparams copy;
  read_fields(copy, fields_to_json(hparams), "test");
  EXPECT_EQ(fields_to_json(copy), fields_to_json(hparams));
  try {
    read_fields(copy, nlohmann::json{{"layr", 1}}, "demo.json: hparams");
    FAIL() << "unknown field accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("demo.json: hparams: unknown field \"layr\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_fields(copy, nlohmann::json{{"layer", "one"}}, "x"), InputError);
  EXPECT_THROW(read_fields(copy, nlohmann::json{{"v_lr", nullptr}}, "x"), InputError);
  EXPECT_EQ(describe_fields(RomeHparams{}).size(), fields_to_json(RomeHparams{}).size());
}

}  // namespace
}  // namespace rc
