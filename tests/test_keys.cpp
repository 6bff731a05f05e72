// `keys`: the .npz dump, the first-token experiment's arms and the PCA.
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/analysis/key_analysis.h"
#include "rome_collapse/io/npz.h"
#include "rome_collapse/util/error.h"
#include "support/golden.h"
#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace rc {
namespace {

using test::run_cli;
using test::scratch_dir;


// Builtin model with two short templates.
nlohmann::json builtin_config_json() {
  return {{"model", "builtin:demo-gpt2"},
          {"hparams", {{"layer", 1}}},
          {"context_templates", {"{}", "The company. {}", "You know. {}"}},
          {"requests",
           {{{"prompt", "{} is a citizen of"}, {"subject", "Leonardo"}, {"target_new", "Japan"}},
            {{"prompt", "{}, that was developed by"}, {"subject", "Windows Phone"}, {"target_new", "Google"}},
            {{"prompt", "The official language of {} is"}, {"subject", "Finland"}, {"target_new", "Spanish"}}}}};
}

struct Analysed {
  LoadedModel loaded;
  KeyRunSetup setup;
  KeyAnalysis analysis;
};

Analysed analyse(const std::filesystem::path& dir, const std::vector<int64_t>& prefix_tokens) {
  auto path = dir / "config.json";
  write_file_atomic(path, builtin_config_json().dump());
  Analysed a;
  a.setup = read_key_run_setup(path, "");
  a.loaded = load_model(a.setup.config.model, "", std::nullopt, "cpu", "float32");
  KeyRunContext context = prepare_key_run(a.loaded, a.setup.config);
  KeyAnalysisOptions options;
  options.prefix_tokens = prefix_tokens;
  a.analysis = analyze_keys(a.loaded, a.setup.config, a.setup.requests, context, options);
  return a;
}

TEST(KeyAnalysis, ZeroShiftReproducesTheBareKeyAndFullPrefixTheTemplateKeys) {
  Analysed a = analyse(scratch_dir("keys_arms"), {0, 3, 4});
  ASSERT_EQ(a.analysis.requests.size(), 3u);
  for (const RequestKeys& r : a.analysis.requests) {
    if (!r.subject_first) {
      EXPECT_TRUE(r.probes.empty()) << "the position experiment is for subject-first requests";
      continue;
    }
    ASSERT_EQ(r.probes.size(), 3u);
    // k = 0: no shift, no prefix -> kᵘ itself, nothing closed.
    EXPECT_TRUE(test::all_close_rel(r.probes[0].shifted_key, r.keys.unprefixed_key, 1e-5, "shift 0"));
    EXPECT_NEAR(r.probes[0].shifted_fraction_closed, 0.0, 1e-5);
    ASSERT_EQ(r.probes[0].real_prefix_keys.size(0), 2);
    EXPECT_NEAR(r.probes[0].real_prefix_fraction_closed, 0.0, 1e-5);
    // k = P (3 for "The company.", 4 for "You know." in the demo vocabulary) is a template's whole
    // prefix: the templated arm then reproduces that template's key exactly.
    int matched = 0;
    for (size_t p = 1; p < r.probes.size(); ++p) {
      const PositionProbe& probe = r.probes[p];
      for (size_t j = 0; j < probe.template_prefix_templates.size(); ++j) {
        const int64_t t = probe.template_prefix_templates[j];
        const int64_t prefix_length = a.loaded.tokenizer->encode(t == 1 ? "The company." : "You know.", false).size();
        if (prefix_length != probe.prefix_tokens) continue;
        EXPECT_TRUE(test::all_close_rel(probe.template_prefix_keys[static_cast<int64_t>(j)], r.keys.prefixed_keys[t], 1e-5,
                                        "templated k=P, template " + std::to_string(t)));
        ++matched;
      }
    }
    EXPECT_EQ(matched, 2) << r.request.subject;
    // The templates' own subject tokens without prefix: a key of its own, defined for both.
    EXPECT_TRUE(r.template_token_key.defined());
    EXPECT_TRUE(std::isfinite(r.template_token_fraction_closed));
  }
  // Leonardo is the outlier of its own cloud.
  EXPECT_GT(a.analysis.requests[0].stats.relative_distance, 1.0);
  EXPECT_EQ(a.analysis.requests[0].stats.cloud_share_closer, 1.0);
}

TEST(KeyAnalysis, PcaFindsTheDominantDirectionOnBothPaths) {
  for (int64_t features : {16, 3000}) {  // covariance path, and the Gram-matrix path (F > 2048 and F > N)
    at::manual_seed(0);
    at::Tensor axis = at::zeros({features}, at::kDouble);
    axis[3] = 0.6;
    axis[5] = -0.8;
    at::Tensor points = at::randn({40, 1}, at::kDouble) * 10.0 * axis.unsqueeze(0) +
                        0.01 * at::randn({40, features}, at::kDouble) + 2.0;
    Pca pca = fit_pca(points, 2);
    ASSERT_EQ(pca.components.size(0), 2);
    const double alignment = std::abs(at::dot(pca.components[0], axis).item<double>());
    EXPECT_GT(alignment, 0.999) << "features " << features;
    EXPECT_GT(pca.explained_variance_ratio[0], 0.9);
    EXPECT_GE(pca.explained_variance_ratio[0], pca.explained_variance_ratio[1]);
    EXPECT_NEAR(pca.components[1].norm().item<double>(), 1.0, 1e-9);
    EXPECT_NEAR(at::dot(pca.components[0], pca.components[1]).item<double>(), 0.0, 1e-6);
    // Deterministic sign: the largest coordinate is positive.
    EXPECT_GT(pca.components[0][5].item<double>(), 0);
  }
  EXPECT_THROW(fit_pca(at::zeros({1, 4}, at::kDouble)), InputError);
}

TEST(KeysCli, WritesNpzAndJson) {
  auto dir = scratch_dir("keys_cli");
  auto config = dir / "config.json";
  write_file_atomic(config, builtin_config_json().dump());
  auto npz = dir / "keys.npz", json_path = dir / "keys.json";
  auto result = run_cli("keys --config " + config.string() + " --out " + npz.string() + " --json " + json_path.string() +
                        " --prefix-tokens 1 2");
  ASSERT_EQ(result.exit_code, 0) << result.out << result.err;
  auto members = read_npz(npz);
  const int64_t f = members.at("unprefixed_keys").shape.at(1);
  EXPECT_EQ(members.at("unprefixed_keys").shape, (std::vector<int64_t>{3, f}));
  EXPECT_EQ(members.at("prefixed_keys").shape, (std::vector<int64_t>{3, 3, f}));
  EXPECT_EQ(members.at("c_inv_kbar").shape, (std::vector<int64_t>{3, f}));
  EXPECT_EQ(members.at("shifted_keys").shape, (std::vector<int64_t>{3, 2, f}));
  EXPECT_EQ(members.at("pca_components").shape, (std::vector<int64_t>{2, f}));
  // Without statistics C⁻¹k̄ is k̄; the bare key is template 0.
  EXPECT_TRUE(test::all_close_rel(members.at("c_inv_kbar").tensor(), members.at("prefixed_key_mean").tensor(), 1e-6, "k̄"));
  EXPECT_TRUE(test::all_close_rel(members.at("unprefixed_keys").tensor(),
                                  members.at("prefixed_keys").tensor().select(1, 0), 1e-6, "kᵘ"));
  std::ifstream in(json_path);
  nlohmann::json json = nlohmann::json::parse(in);
  EXPECT_EQ(json["command"], "keys");
  EXPECT_EQ(json["summary"]["subject_first"]["requests"].get<int>(), 2);
  EXPECT_EQ(json["summary"]["subject_first"]["position_experiment"].size(), 2u);
  EXPECT_EQ(json["pca"]["explained_variance_ratio"].size(), 2u);
  EXPECT_EQ(json["pca"]["requests"][0]["prefixed"].size(), 2u);
  EXPECT_TRUE(json["requests"][2]["position_experiment"].is_null());
  EXPECT_NE(result.out.find("first-token experiment"), std::string::npos) << result.out;

  EXPECT_EQ(run_cli("keys --config " + config.string() + " --out " + npz.string() + " --prefix-tokens 0").exit_code, 2);
  EXPECT_EQ(run_cli("keys --config " + config.string()).exit_code, 2) << "--out is required";
}

TEST(KeysGolden, LeonardoIsFarFromItsCloudOnTheReferenceModel) {
  ROME_REQUIRE_SHARED();
  auto dir = scratch_dir("keys_golden");
  const auto& gpt2 = test::golden_reference()["gpt2"];
  nlohmann::json requests = nlohmann::json::array();
  for (const auto& c : gpt2["cases"])
    if (c["mode"] == "rome") requests.push_back(c["request"]);
  nlohmann::json config = {{"model", test::reference_model_dir("gpt2")},
                           {"tokenizer", test::shared_path("tokenizers/gpt2").string()},
                           {"add_bos", false},
                           {"hparams", {{"layer", 1}}},
                           {"context_templates", gpt2["context_templates"]},
                           {"requests", requests}};
  write_file_atomic(dir / "golden.json", config.dump());
  KeyRunSetup setup = read_key_run_setup(dir / "golden.json", "");
  LoadedModel loaded = load_model(setup.config.model, setup.config.tokenizer, false, "cpu", "float32");
  KeyAnalysis analysis = analyze_keys(loaded, setup.config, setup.requests, prepare_key_run(loaded, setup.config));
  for (const auto& c : gpt2["cases"]) {
    if (c["mode"] != "rome") continue;
    for (const RequestKeys& r : analysis.requests)
      if (r.request.subject == c["request"]["subject"])
        EXPECT_NEAR(r.stats.cos_unprefixed_prefixed, c["cos_ku_kbar"].get<double>(), 1e-4) << r.request.subject;
  }
  EXPECT_EQ(analysis.requests[0].request.subject, "Leonardo");
  EXPECT_GT(analysis.requests[0].stats.relative_distance, 2.0);
}

}  // namespace
}  // namespace rc
