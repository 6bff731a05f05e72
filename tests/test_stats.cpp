// `rome-collapse stats` and the edit with a second moment C:
//  1. C of the reference tiny GPT-2 equals an independent computation (a GPT-2 written out in
//     this file from the Hugging Face weights, text by text, float64 sums);
//  2. an interrupted run (simulated, SIGINT, SIGKILL) resumes to a file byte-identical to an
//     uninterrupted one; a checkpoint of another run is refused;
//  3. an edit with C: u = C⁻¹k̄/‖C⁻¹k̄‖ and the denominator kᵘ·u recomputed here, provenance
//     recorded; a singular C asks for hparams.mom2_ridge, and with a ridge the edit runs.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <thread>

#include <ATen/ATen.h>
#include <Eigen/Dense>

#include "rome_collapse/analysis/key_statistics.h"
#include "rome_collapse/experiment/edit_config.h"
#include "rome_collapse/io/npz.h"
#include "rome_collapse/io/text_file.h"
#include "rome_collapse/rome/edit.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "support/golden.h"

extern char** environ;

namespace rc {
namespace {

namespace fs = std::filesystem;

std::string shell_quoted(const std::string& text) { return "'" + text + "'"; }

// The CLI arguments of a tiny-GPT-2 stats run over wikitext (no BOS, as GPT-2's tokenizer).
std::string tiny_gpt2_stats_args(int64_t layer, int64_t samples, int64_t batch_size) {
  return "stats --model " + shell_quoted(test::reference_model_dir("gpt2")) + " --tokenizer " +
         shell_quoted(test::shared_path("tokenizers/gpt2").string()) + " --no-bos --layer " + std::to_string(layer) +
         " --corpus " + shell_quoted(test::shared_path("data/corpus/wikitext-2-valid.txt").string()) + " --samples " +
         std::to_string(samples) + " --batch-size " + std::to_string(batch_size);
}

// ---- An independent GPT-2 up to the key of layer L (HF weights and layouts, Conv1D y = x W + b).

at::Tensor gelu_tanh(const at::Tensor& x) {
  return 0.5 * x * (1.0 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x.pow(3))));
}

// Keys [T, F] of one text at `layer`, computed in `dtype`.
at::Tensor reference_gpt2_keys(const std::map<std::string, at::Tensor>& weights, const ModelConfig& config,
                               const std::vector<int64_t>& ids, int64_t layer, at::ScalarType dtype) {
  auto w = [&](const std::string& name) { return weights.at(name).to(dtype); };
  const int64_t T = static_cast<int64_t>(ids.size()), D = config.d_model, H = config.n_heads, hd = D / H;
  const at::Tensor id_tensor = at::tensor(ids, at::kLong);
  at::Tensor x = w("transformer.wte.weight").index_select(0, id_tensor) +
                 w("transformer.wpe.weight").slice(0, 0, T);  // [T, D]
  const at::Tensor future = at::ones({T, T}, at::kBool).triu(1);  // [T, T], true above the diagonal
  for (int64_t l = 0;; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    at::Tensor h = at::layer_norm(x, {D}, w(p + "ln_1.weight"), w(p + "ln_1.bias"), config.norm_eps);
    at::Tensor qkv = h.matmul(w(p + "attn.c_attn.weight")) + w(p + "attn.c_attn.bias");  // [T, 3D]
    auto heads = [&](const at::Tensor& t) { return t.reshape({T, H, hd}).transpose(0, 1); };  // [H, T, hd]
    at::Tensor q = heads(qkv.slice(1, 0, D)), k = heads(qkv.slice(1, D, 2 * D)), v = heads(qkv.slice(1, 2 * D, 3 * D));
    at::Tensor scores = q.matmul(k.transpose(1, 2)) / std::sqrt(double(hd));  // [H, T, T]
    scores = scores.masked_fill(future, -std::numeric_limits<double>::infinity());
    at::Tensor attended = scores.softmax(-1).matmul(v).transpose(0, 1).reshape({T, D});
    x = x + attended.matmul(w(p + "attn.c_proj.weight")) + w(p + "attn.c_proj.bias");
    at::Tensor m = at::layer_norm(x, {D}, w(p + "ln_2.weight"), w(p + "ln_2.bias"), config.norm_eps);
    at::Tensor key = gelu_tanh(m.matmul(w(p + "mlp.c_fc.weight")) + w(p + "mlp.c_fc.bias"));  // [T, F]
    if (l == layer) return key;
    x = x + key.matmul(w(p + "mlp.c_proj.weight")) + w(p + "mlp.c_proj.bias");
  }
}

TEST(Stats, TinyGpt2MatchesAnIndependentComputation) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("stats-independent");
  const int64_t layer = 2, samples = 64;
  const auto run = test::run_cli(tiny_gpt2_stats_args(layer, samples, 8) + " --storage-dtype float64 --out " +
                                 shell_quoted((dir / "c.npz").string()));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_FALSE(fs::exists(checkpoint_path_for(dir / "c.npz"))) << "partial file left after success";
  const SecondMoment moment = read_second_moment_npz(dir / "c.npz");
  EXPECT_EQ(moment.sample_size, samples);
  EXPECT_EQ(moment.constructor, kSecondMomentConstructor);

  LoadedModel loaded = load_model(test::reference_model_dir("gpt2"), test::shared_path("tokenizers/gpt2").string(),
                                  false, "cpu", "float32");
  const auto weights = loaded.model->hf_state_dict();
  const auto texts = read_texts(test::shared_path("data/corpus/wikitext-2-valid.txt"));
  const int64_t F = loaded.model->config().d_ff;
  at::Tensor expected = at::zeros({F, F}, at::kDouble);  // Σ k kᵀ
  int64_t count = 0;
  for (int64_t i = 0; i < samples; ++i) {
    std::vector<int64_t> ids = loaded.encode(texts[i]);
    if (static_cast<int64_t>(ids.size()) > loaded.model->config().max_positions)
      ids.resize(loaded.model->config().max_positions);
    if (ids.empty()) continue;
    at::Tensor keys = reference_gpt2_keys(weights, loaded.model->config(), ids, layer, at::kDouble);  // [T, F]
    expected += keys.t().matmul(keys);
    count += keys.size(0);
  }
  EXPECT_EQ(moment.count, count);
  EXPECT_TRUE(test::all_close_rel(moment.mom2, expected, 1e-6, "Σ k kᵀ (stats vs independent float64 GPT-2)"));
  EXPECT_TRUE(at::equal(moment.mom2, moment.mom2.t())) << "mom2 not symmetric";

  // Stored as float32 by default (ROME's published files): the same sums, rounded.
  const auto run32 = test::run_cli(tiny_gpt2_stats_args(layer, samples, 8) + " --out " + shell_quoted((dir / "c32.npz").string()));
  ASSERT_EQ(run32.exit_code, 0) << run32.err;
  const auto members = read_npz(dir / "c32.npz");
  EXPECT_EQ(members.at("mom2.mom2").descr, "<f4");
  EXPECT_TRUE(at::equal(members.at("mom2.mom2").tensor(), moment.mom2.to(at::kFloat)));
}

TEST(Stats, BadInputsExitTwo) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("stats-bad-inputs");
  auto run = test::run_cli(tiny_gpt2_stats_args(9, 4, 2) + " --out " + shell_quoted((dir / "c.npz").string()));
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_NE(run.err.find("--layer"), std::string::npos) << run.err;
  run = test::run_cli("stats --model " + shell_quoted(test::reference_model_dir("gpt2")) + " --tokenizer " +
                      shell_quoted(test::shared_path("tokenizers/gpt2").string()) + " --layer 1 --corpus " +
                      shell_quoted((dir / "absent.txt").string()) + " --out " + shell_quoted((dir / "c.npz").string()));
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_NE(run.err.find("absent.txt"), std::string::npos) << run.err;
  EXPECT_FALSE(fs::exists(dir / "c.npz"));
}

// ---- Interruption and resumption.

TEST(Stats, SimulatedInterruptionsResumeToIdenticalBytes) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("stats-resume");
  const std::string args = tiny_gpt2_stats_args(1, 40, 4);
  const fs::path full = dir / "full.npz", resumed = dir / "resumed.npz", partial = checkpoint_path_for(resumed);

  auto run = test::run_cli(args + " --checkpoint-every 8 --out " + shell_quoted(full.string()));
  ASSERT_EQ(run.exit_code, 0) << run.err;

  // Stop after 12 texts (checkpoint at a batch boundary), resume with another checkpoint interval
  // and stop again after 26 (rounded up to the batch boundary 28), then finish.
  run = test::run_cli(args + " --checkpoint-every 8 --stop-after-texts 12 --out " + shell_quoted(resumed.string()));
  ASSERT_EQ(run.exit_code, 130) << run.err;
  EXPECT_NE(run.err.find("resume"), std::string::npos) << run.err;
  ASSERT_TRUE(fs::exists(partial));
  EXPECT_FALSE(fs::exists(resumed));
  EXPECT_EQ(read_npz(partial).at("texts_done").tensor().item<int64_t>(), 12);

  run = test::run_cli(args + " --checkpoint-every 3 --stop-after-texts 26 --out " + shell_quoted(resumed.string()));
  ASSERT_EQ(run.exit_code, 130) << run.err;
  EXPECT_NE(run.err.find("resuming"), std::string::npos) << run.err;
  EXPECT_EQ(read_npz(partial).at("texts_done").tensor().item<int64_t>(), 28);

  // Another run's options: refused, with the field named and the advice to delete the file.
  auto other = test::run_cli(tiny_gpt2_stats_args(2, 40, 4) + " --out " + shell_quoted(resumed.string()));
  EXPECT_EQ(other.exit_code, 2) << other.err;
  EXPECT_NE(other.err.find("layer"), std::string::npos) << other.err;
  EXPECT_NE(other.err.find("delete"), std::string::npos) << other.err;
  other = test::run_cli(tiny_gpt2_stats_args(1, 40, 5) + " --out " + shell_quoted(resumed.string()));
  EXPECT_EQ(other.exit_code, 2) << other.err;
  EXPECT_NE(other.err.find("batch_size"), std::string::npos) << other.err;

  run = test::run_cli(args + " --out " + shell_quoted(resumed.string()));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_FALSE(fs::exists(partial)) << "partial file left after success";
  EXPECT_EQ(sha256_file(resumed), sha256_file(full)) << "resumed run differs from the uninterrupted one";

  // float64 output too (the stored dtype is not part of the run's identity).
  run = test::run_cli(args + " --stop-after-texts 20 --out " + shell_quoted(resumed.string()));
  ASSERT_EQ(run.exit_code, 130) << run.err;
  run = test::run_cli(args + " --storage-dtype float64 --out " + shell_quoted(resumed.string()));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_TRUE(at::equal(read_second_moment_npz(resumed).mom2.to(at::kFloat), read_second_moment_npz(full).mom2.to(at::kFloat)));
}

std::string cli_binary() {
  const char* env = std::getenv("ROME_CLI");
  return env ? env : std::string(ROME_BINARY_DIR) + "/rome-collapse";
}

// Starts the CLI in the background with stdout and stderr into `log`.
pid_t spawn_cli(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<std::string> all = {cli_binary()};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& arg : all) argv.push_back(arg.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  const int error = posix_spawn(&pid, all[0].c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return error == 0 ? pid : -1;
}

std::vector<std::string> tiny_gpt2_argv(int64_t samples, int64_t batch_size, int64_t checkpoint_every,
                                        const fs::path& out) {
  return {"stats", "--model", test::reference_model_dir("gpt2"), "--tokenizer",
          test::shared_path("tokenizers/gpt2").string(), "--no-bos", "--layer", "1", "--corpus",
          test::shared_path("data/corpus/wikitext-2-valid.txt").string(), "--samples", std::to_string(samples),
          "--batch-size", std::to_string(batch_size), "--checkpoint-every", std::to_string(checkpoint_every), "--out",
          out.string()};
}

// Waits until `ready` holds or the process ends; true when it still runs and `ready` holds.
template <class Ready>
bool wait_while_running(pid_t pid, Ready&& ready, int* status) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid, status, WNOHANG) == pid) return false;
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

TEST(Stats, RealSignalsResumeToIdenticalBytes) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("stats-signals");
  const int64_t samples = 400, batch = 2;
  const fs::path reference = dir / "reference.npz";
  std::vector<std::string> reference_argv = tiny_gpt2_argv(samples, batch, 1000000, reference);
  std::string reference_args;
  for (size_t i = 0; i < reference_argv.size(); ++i) reference_args += shell_quoted(reference_argv[i]) + " ";
  auto run = test::run_cli(reference_args);
  ASSERT_EQ(run.exit_code, 0) << run.err;

  // SIGKILL (kill -9) at an arbitrary moment after the first checkpoint, checkpoints every batch
  // (so the kill may land while one is being written).
  {
    const fs::path out = dir / "killed.npz", partial = checkpoint_path_for(out), log = dir / "killed.log";
    const pid_t pid = spawn_cli(tiny_gpt2_argv(samples, batch, 1, out), log);
    ASSERT_GT(pid, 0);
    int status = 0;
    if (wait_while_running(pid, [&] { return fs::exists(partial); }, &status)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(150));
      ::kill(pid, SIGKILL);
      ASSERT_EQ(waitpid(pid, &status, 0), pid);
    }
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
      ASSERT_TRUE(fs::exists(partial)) << read_file(log);
      const int64_t done = read_npz(partial).at("texts_done").tensor().item<int64_t>();
      EXPECT_GT(done, 0);
      EXPECT_LT(done, samples);
      std::cerr << "[ killed  ] SIGKILL after " << done << " of " << samples << " texts\n";
    } else {
      std::cerr << "[ note    ] the run finished before SIGKILL; only the final file is compared\n";
    }
    std::vector<std::string> argv = tiny_gpt2_argv(samples, batch, 1, out);
    std::string args;
    for (const auto& a : argv) args += shell_quoted(a) + " ";
    run = test::run_cli(args);
    ASSERT_EQ(run.exit_code, 0) << run.err;
    EXPECT_FALSE(fs::exists(partial));
    EXPECT_EQ(sha256_file(out), sha256_file(reference)) << "run resumed after SIGKILL differs";
  }

  // SIGINT: the current batch finishes, a checkpoint is written, exit 130 with a message.
  {
    const fs::path out = dir / "interrupted.npz", partial = checkpoint_path_for(out), log = dir / "interrupted.log";
    const pid_t pid = spawn_cli(tiny_gpt2_argv(samples, batch, 1000000, out), log);
    ASSERT_GT(pid, 0);
    int status = 0;
    // The header line is printed once the signal handlers are in place.
    const bool running = wait_while_running(
        pid, [&] { return fs::exists(log) && read_file(log).find(" layer ") != std::string::npos; }, &status);
    if (running) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      ::kill(pid, SIGINT);
      ASSERT_EQ(waitpid(pid, &status, 0), pid);
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 130) {
      const std::string messages = read_file(log);
      EXPECT_NE(messages.find("SIGINT"), std::string::npos) << messages;
      ASSERT_TRUE(fs::exists(partial)) << messages;
      std::cerr << "[ stopped ] SIGINT after " << read_npz(partial).at("texts_done").tensor().item<int64_t>()
                << " texts\n";
    } else {
      std::cerr << "[ note    ] the run finished before SIGINT (status " << status << ")\n";
    }
    std::vector<std::string> argv = tiny_gpt2_argv(samples, batch, 1000000, out);
    std::string args;
    for (const auto& a : argv) args += shell_quoted(a) + " ";
    run = test::run_cli(args);
    ASSERT_EQ(run.exit_code, 0) << run.err;
    EXPECT_EQ(sha256_file(out), sha256_file(reference)) << "run resumed after SIGINT differs";
  }
  // No temporary files left next to the outputs.
  for (const auto& entry : fs::directory_iterator(dir))
    EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << entry.path();
}

// ---- The edit with C.

EditConfig tiny_gpt2_edit_config(const nlohmann::json& request, const nlohmann::json& hparams_extra) {
  const auto& golden = test::golden_reference()["gpt2"];
  nlohmann::json hparams = {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 20}, {"v_lr", 0.5},
                            {"v_weight_decay", 0.5}, {"clamp_norm_factor", 4}, {"kl_factor", 0.0625}};
  hparams.update(hparams_extra);
  nlohmann::json json = {{"model", test::reference_model_dir("gpt2")},
                         {"tokenizer", test::shared_path("tokenizers/gpt2").string()},
                         {"add_bos", false},
                         {"request", request},
                         {"hparams", hparams},
                         {"context_templates", golden["context_templates"]},
                         {"dump_vectors", true}};
  return parse_edit_config(json, "stats-edit-test", ".");
}

at::Tensor vector_of(const nlohmann::json& result, const char* name) {
  return test::json_to_tensor(result["vectors"][name]);
}

// C⁻¹ k by an LU solve (not the Cholesky the code uses), float64.
at::Tensor lu_solve(const at::Tensor& c, const at::Tensor& k) {
  const int64_t n = c.size(0);
  at::Tensor c64 = c.to(at::kDouble).contiguous(), k64 = k.to(at::kDouble).contiguous();
  Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> c_map(c64.data_ptr<double>(), n, n);
  Eigen::Map<const Eigen::VectorXd> k_map(k64.data_ptr<double>(), n);
  Eigen::VectorXd x = Eigen::MatrixXd(c_map).fullPivLu().solve(k_map);
  return at::from_blob(x.data(), {n}, at::kDouble).clone();
}

TEST(Stats, EditWithSecondMoment) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("stats-edit");
  const fs::path stats = dir / "layer1.npz";
  const auto run = test::run_cli(tiny_gpt2_stats_args(1, 64, 8) + " --out " + shell_quoted(stats.string()));
  ASSERT_EQ(run.exit_code, 0) << run.err;

  const nlohmann::json request = test::golden_reference()["gpt2"]["cases"][2]["request"];  // not subject-first
  EditConfig plain = tiny_gpt2_edit_config(request, {{"mom2_adjustment", false}});
  EditConfig with_c = tiny_gpt2_edit_config(request, {{"mom2_adjustment", true}, {"stats", stats.string()}});
  LoadedModel loaded = load_model(plain.model, plain.tokenizer, plain.add_bos, "cpu", "float32");
  EditOptions no_eval;
  no_eval.evaluate = false;
  const EditContext plain_context = prepare_edit_context(loaded, plain);
  const EditContext c_context = prepare_edit_context(loaded, with_c);
  const nlohmann::json r0 = run_edit(loaded, plain, plain.request, EditMethod::Rome, plain_context, no_eval).result;
  const nlohmann::json r = run_edit(loaded, with_c, with_c.request, EditMethod::Rome, c_context, no_eval).result;

  // u = C⁻¹k̄ / ‖C⁻¹k̄‖ with C = mom2 / count from the file's own values.
  const auto members = read_npz(stats);
  const at::Tensor c = members.at("mom2.mom2").tensor().to(at::kDouble) / double(members.at("mom2.count").tensor().item<int64_t>());
  const at::Tensor k_bar = vector_of(r, "prefixed_key_mean"), k_u = vector_of(r, "unprefixed_key");
  const at::Tensor solved = lu_solve(c, k_bar);
  const at::Tensor u_expected = solved / solved.norm();
  EXPECT_TRUE(test::all_close_rel(vector_of(r, "left_vector"), u_expected, 1e-6, "u = C^-1 k̄ / |C^-1 k̄|"));

  // Denominator kᵘ·u, with and without C (scale: ‖kᵘ‖, since ‖u‖ = 1).
  const double scale = k_u.norm().item<double>();
  const double denominator_c = k_u.dot(u_expected).item<double>();
  const double denominator_plain = k_u.dot(k_bar / k_bar.norm()).item<double>();
  EXPECT_NEAR(r["denominator"].get<double>(), denominator_c, 1e-6 * scale);
  EXPECT_NEAR(r0["denominator"].get<double>(), denominator_plain, 1e-6 * scale);
  EXPECT_GT(std::abs(denominator_c - denominator_plain), 1e-3 * scale) << "C changed nothing";
  const at::Tensor right_expected = (vector_of(r, "v_star") - vector_of(r, "unprefixed_output")) / denominator_c;
  EXPECT_TRUE(test::all_close_rel(vector_of(r, "right_vector"), right_expected, 1e-5, "v = (v* - W kᵘ - b) / kᵘ·u"));

  const auto& covariance = r["provenance"]["covariance"];
  ASSERT_TRUE(covariance.is_object()) << r["provenance"].dump();
  EXPECT_EQ(covariance["file"], stats.string());
  EXPECT_EQ(covariance["sha256"], sha256_file(stats));
  EXPECT_EQ(covariance["count"], members.at("mom2.count").tensor().item<int64_t>());
  EXPECT_TRUE(r0["provenance"]["covariance"].is_null());

  // A rank-deficient C (10 tokens for F = 256): NumericError naming mom2_ridge; a ridge fixes it.
  at::manual_seed(1);
  const at::Tensor few_keys = at::randn({10, loaded.model->config().d_ff}, at::kDouble);  // [10, F]
  const fs::path singular = dir / "singular.npz";
  write_second_moment_npz(singular, few_keys.t().mm(few_keys), 10, 1, at::kDouble);
  EditConfig singular_config = tiny_gpt2_edit_config(request, {{"mom2_adjustment", true}, {"stats", singular.string()}});
  const EditContext singular_context = prepare_edit_context(loaded, singular_config);
  try {
    run_edit(loaded, singular_config, singular_config.request, EditMethod::Rome, singular_context, no_eval);
    ADD_FAILURE() << "expected a NumericError for a singular C";
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find("mom2_ridge"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("singular.npz"), std::string::npos) << e.what();
  }
  EditConfig ridged = tiny_gpt2_edit_config(
      request, {{"mom2_adjustment", true}, {"stats", singular.string()}, {"mom2_ridge", 1e-2}});
  const EditContext ridged_context = prepare_edit_context(loaded, ridged);
  const nlohmann::json rr = run_edit(loaded, ridged, ridged.request, EditMethod::Rome, ridged_context, no_eval).result;
  EXPECT_TRUE(std::isfinite(rr["update_norm"].get<double>()));
  EXPECT_EQ(rr["provenance"]["covariance"]["ridge"].get<double>(), 1e-2);
  at::Tensor c_ridged = few_keys.t().mm(few_keys) / 10.0;
  c_ridged += 1e-2 * c_ridged.diagonal().mean() * at::eye(c_ridged.size(0), at::kDouble);
  const at::Tensor solved_ridged = lu_solve(c_ridged, vector_of(rr, "prefixed_key_mean"));
  EXPECT_TRUE(test::all_close_rel(vector_of(rr, "left_vector"), solved_ridged / solved_ridged.norm(), 1e-5,
                                  "u with ridge"));

  // Statistics of another shape: InputError naming the file and d_ff.
  const fs::path wrong = dir / "wrong-size.npz";
  write_second_moment_npz(wrong, at::eye(64, at::kDouble), 5, 1, at::kDouble);
  EditConfig wrong_config = tiny_gpt2_edit_config(request, {{"mom2_adjustment", true}, {"stats", wrong.string()}});
  const EditContext wrong_context = prepare_edit_context(loaded, wrong_config);
  try {
    run_edit(loaded, wrong_config, wrong_config.request, EditMethod::Rome, wrong_context, no_eval);
    ADD_FAILURE() << "expected an InputError for a 64x64 C";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("wrong-size.npz"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("d_ff"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace rc
