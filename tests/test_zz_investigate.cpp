// SCRATCH (investigation of the llama v* mismatch) -- delete when done.
#include <algorithm>
#include <cstdlib>
#include <ATen/Parallel.h>
#include <iostream>
#include <torch/csrc/autograd/autograd.h>

#include "rome_collapse/rome/edit.h"
#include "rome_collapse/rome/value.h"
#include "rome_collapse/rome/loaded_model.h"
#include "support/golden.h"

namespace rc {
namespace {

struct Toggles {
  double nll_scale = 1.0;
  double kl_scale = 1.0;
  bool adam_lerp = false;
  bool clamp_div = false;        // delta * max_norm / norm
  double wd_norm_perturb = 0.0;  // relative perturbation of ||t||
  double grad_noise = 0.0;       // relative noise on grad
  bool dbl = false;              // run the optimisation in double
  int steps = 20;
  bool verbose = false;
  double eps = 1e-8;
  int64_t seed = 0;
  bool f64_model = false;
  int threads = 0;
  int extra_pad = 0;
};

struct Setup {
  LoadedModel loaded;
  std::vector<std::string> templates;
};

Setup& setup(const std::string& arch, bool f64 = false) {
  static std::map<std::string, std::unique_ptr<Setup>> cache;
  auto& s = cache[arch + (f64 ? "64" : "32")];
  if (!s) {
    s = std::make_unique<Setup>();
    s->loaded = load_model(test::reference_model_dir(arch), test::shared_path("tokenizers/gpt2").string(), false, "cpu",
                           f64 ? "float64" : "float32");
    for (const auto& t : test::golden_reference()[arch]["context_templates"]) s->templates.push_back(t);
  }
  return *s;
}

// Returns v*.
at::Tensor run(const std::string& arch, int case_index, const Toggles& tg) {
  Setup& s = setup(arch, tg.f64_model);
  const int saved_threads = at::get_num_threads();
  if (tg.threads > 0) at::set_num_threads(tg.threads);
  const CausalLM& model = *s.loaded.model;
  const auto& gc = test::golden_reference()[arch]["cases"][case_index];
  EditRequest request = parse_request(gc["request"], "req");
  RomeHparams hp;
  hp.layer = 1;
  hp.v_loss_layer = 3;
  ValueBatch batch = build_value_batch(*s.loaded.tokenizer, false, request, s.templates, hp.kl_prompt,
                                       s.loaded.pad_id(), model.device());
  if (tg.extra_pad > 0)
    batch.ids = at::cat({batch.ids, at::full({batch.ids.size(0), tg.extra_pad}, s.loaded.pad_id(), batch.ids.options())}, 1);
  LayerCapture capture = capture_rewrite_layer(model, batch, hp.layer);
  const auto ft = (tg.dbl || tg.f64_model) ? at::kDouble : at::kFloat;
  const int64_t rows = batch.rewriting_rows, nt = batch.target_ids.size();
  at::Tensor target_init = capture.outputs[0].detach().to(ft).clone();
  at::Tensor tnorm = target_init.norm() * (1.0 + tg.wd_norm_perturb);
  at::Tensor delta = at::zeros({model.config().d_model}, at::TensorOptions().dtype(ft));
  delta.requires_grad_(true);
  at::Tensor m = at::zeros_like(delta).detach(), v = at::zeros_like(delta).detach();
  std::vector<TokenPosition> tp;
  std::vector<int64_t> labels_v;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < nt; ++j) {
      tp.push_back({r, batch.lengths[r] - nt + j});
      labels_v.push_back(batch.target_ids[j]);
    }
  TokenPosition klp{rows, batch.lookup[rows]};
  at::Tensor labels = at::tensor(labels_v, at::kLong);
  ForwardOptions options;
  options.intervention.layer = hp.layer;
  for (size_t r = 0; r < batch.lookup.size(); ++r) options.intervention.delta_at.push_back({int64_t(r), batch.lookup[r]});
  options.start_layer = hp.layer;
  options.initial_hidden = capture.hidden_entering;
  options.logits_at = tp;
  options.logits_at.push_back(klp);
  at::Tensor kl_init;
  at::manual_seed(tg.seed);
  int step = 0;
  for (int it = 0; it < tg.steps; ++it) {
    options.intervention.delta = delta;
    ForwardOutput out = model.forward(batch.ids, options);
    at::Tensor logits = out.logits.to(ft);
    at::Tensor tl = at::log_softmax(logits.slice(0, 0, rows * nt), -1);
    at::Tensor kll = at::log_softmax(logits[rows * nt], -1);
    if (!kl_init.defined()) kl_init = kll.detach().clone();
    at::Tensor tok = tl.gather(-1, labels.unsqueeze(-1)).squeeze(-1);
    at::Tensor nll = -(tok.view({rows, nt}).sum(1) / double(nt)).mean();
    at::Tensor kl = hp.kl_factor * (kll.exp() * (kll - kl_init)).sum();
    at::Tensor wd = hp.v_weight_decay * (delta.norm() / tnorm.pow(2));
    at::Tensor loss = tg.nll_scale * nll + tg.kl_scale * kl + wd;
    if (tg.verbose)
      std::cout << "  it " << it << " loss " << loss.item<double>() << " nll " << nll.item<double>() << " kl "
                << kl.item<double>() << " wd " << wd.item<double>() << " |d| " << delta.norm().item<double>() << "\n";
    if (loss.item<double>() < 5e-2) break;
    if (it == tg.steps - 1) break;
    at::Tensor g = torch::autograd::grad({loss}, {delta})[0];
    at::NoGradGuard ng;
    if (tg.grad_noise > 0) g = g * (1 + tg.grad_noise * at::randn_like(g));
    ++step;
    if (tg.adam_lerp) m.lerp_(g, 0.1); else m.mul_(0.9).add_(g, 0.1);
    v.mul_(0.999).addcmul_(g, g, 0.001);
    double bc1 = 1 - std::pow(0.9, step), bc2s = std::sqrt(1 - std::pow(0.999, step));
    at::Tensor denom = (v.sqrt() / bc2s).add_(tg.eps);
    delta.addcdiv_(m, denom, -0.5 / bc1);
    at::Tensor maxn = 4.0 * target_init.norm();
    if (delta.norm().item<double>() > maxn.item<double>()) {
      if (tg.clamp_div) delta.copy_(delta * maxn / delta.norm());
      else delta.mul_(maxn / delta.norm());
    }
  }
  at::set_num_threads(saved_threads);
  return (target_init + delta.detach()).to(at::kDouble);
}

void report(const std::string& label, const std::string& arch, int c, const at::Tensor& vs) {
  at::Tensor g = test::json_to_tensor(test::golden_reference()[arch]["cases"][c]["v_star"]);
  at::Tensor t0 = test::json_to_tensor(test::golden_reference()[arch]["cases"][c]["out_unprefixed"]);
  double d = (vs - g).norm().item<double>();
  double rel = (vs - g).abs().max().item<double>() / g.abs().max().item<double>();
  std::printf("%-28s %s c%d  |v*-gold| %.3e  maxrel %.3e  |gold-init| %.4f\n", label.c_str(), arch.c_str(), c, d, rel,
              (g - t0).norm().item<double>());
}

TEST(Investigate, Baseline) {
  for (std::string arch : {"llama", "gpt2", "gptj"})
    for (int c : {0, 2, 4, 6}) report("baseline", arch, c, run(arch, c, {}));
}

TEST(Investigate, Verbose) {
  Toggles t;
  t.verbose = true;
  report("baseline", "llama", 2, run("llama", 2, t));
}

TEST(Investigate, Sensitivity) {
  for (int c : {2, 4, 6, 0}) {
    at::Tensor base = run("llama", c, {});
    auto show = [&](const std::string& label, const Toggles& t) {
      at::Tensor vs = run("llama", c, t);
      report(label, "llama", c, vs);
      std::printf("    |v - base| %.3e\n", (vs - base).norm().item<double>());
    };
    Toggles t;
    t.nll_scale = 0.0; show("no nll", t);
    t = {}; t.nll_scale = 1.01; show("nll*1.01", t);
    t = {}; t.kl_scale = 0.0; show("no kl", t);
    t = {}; t.adam_lerp = true; show("adam lerp", t);
    t = {}; t.clamp_div = true; show("clamp div", t);
    t = {}; t.wd_norm_perturb = 1e-7; show("wd norm +1e-7", t);
    t = {}; t.dbl = true; show("double", t);
    for (int s = 1; s <= 3; ++s) { t = {}; t.grad_noise = 1e-6; t.seed = s; show("grad noise 1e-6", t); }
  }
}

double maxrel(const at::Tensor& a, const at::Tensor& g) { return (a - g).abs().max().item<double>() / g.abs().max().item<double>(); }

TEST(Investigate, Ensemble) {
  std::vector<std::pair<std::string, int>> cases = {{"llama", 2}, {"llama", 4}, {"llama", 0}, {"llama", 6},
                                                    {"gpt2", 2}, {"gpt2", 4}, {"gptj", 2}, {"gptj", 4}};
  for (auto [arch, c] : cases) {
    at::Tensor gold = test::json_to_tensor(test::golden_reference()[arch]["cases"][c]["v_star"]);
    Toggles t;
    t.f64_model = true;
    at::Tensor exact = run(arch, c, t);
    at::Tensor f32 = run(arch, c, {});
    std::printf("%s c%d: |gold-exact| %.3e (maxrel %.2e)  |f32-exact| %.3e (maxrel %.2e)  |f32-gold| %.3e (maxrel %.2e)\n",
                arch.c_str(), c, (gold - exact).norm().item<double>(), maxrel(exact, gold),
                (f32 - exact).norm().item<double>(), maxrel(f32, gold), (f32 - gold).norm().item<double>(), maxrel(f32, gold));
    auto phys = [&](const std::string& label, Toggles tt) {
      at::Tensor vs = run(arch, c, tt);
      std::printf("   %-16s |v-exact| %.3e  |v-gold| %.3e  maxrel(v,gold) %.2e\n", label.c_str(),
                  (vs - exact).norm().item<double>(), (vs - gold).norm().item<double>(), maxrel(vs, gold));
    };
    Toggles tt;
    tt = {}; tt.threads = 1; phys("threads=1", tt);
    tt = {}; tt.extra_pad = 3; phys("pad+3", tt);
    tt = {}; tt.extra_pad = 11; phys("pad+11", tt);
    tt = {}; tt.adam_lerp = true; tt.clamp_div = true; phys("lerp+clampdiv", tt);
    tt = {}; tt.adam_lerp = true; tt.clamp_div = true; tt.extra_pad = 11; tt.threads = 1; phys("all phys", tt);
    for (double sigma : {6e-8, 1.2e-7}) {
      std::vector<double> d;
      std::vector<double> mr;
      for (int seed = 1; seed <= 24; ++seed) {
        tt = {}; tt.grad_noise = sigma; tt.seed = seed;
        at::Tensor vs = run(arch, c, tt);
        d.push_back((vs - exact).norm().item<double>());
        mr.push_back(maxrel(vs, exact));
      }
      std::sort(d.begin(), d.end());
      std::sort(mr.begin(), mr.end());
      std::printf("   noise %.1e: |v-exact| median %.3e  p90 %.3e  max %.3e ; maxrel(v,exact) median %.2e p90 %.2e max %.2e\n",
                  sigma, d[12], d[21], d[23], mr[12], mr[21], mr[23]);
    }
  }
}

TEST(Investigate, Directions) {
  for (auto [arch, c] : std::vector<std::pair<std::string, int>>{{"llama", 2}, {"llama", 4}}) {
    at::Tensor gold = test::json_to_tensor(test::golden_reference()[arch]["cases"][c]["v_star"]);
    Toggles base;
    base.f64_model = true;
    at::Tensor exact = run(arch, c, base);
    at::Tensor dg = gold - exact;
    auto show = [&](const std::string& label, Toggles t) {
      at::Tensor d = run(arch, c, t) - exact;
      double cs = at::cosine_similarity(dg, d, 0).item<double>();
      std::printf("%s c%d %-22s |d| %.3e  cos(gold-exact, d) %+.3f  best-fit scale %.3e\n", arch.c_str(), c, label.c_str(),
                  d.norm().item<double>(), cs, (dg.dot(d) / d.dot(d)).item<double>());
    };
    Toggles t;
    t = base; t.nll_scale = 1.001; show("nll*1.001", t);
    t = base; t.kl_scale = 1.01; show("kl*1.01", t);
    t = base; t.kl_scale = 0.0; show("no kl", t);
    t = base; t.wd_norm_perturb = 1e-5; show("wd norm*(1+1e-5)", t);
    t = base; t.steps = 19; show("19 iterations", t);
    t = base; t.steps = 21; show("21 iterations", t);
    t = base; t.eps = 1e-6; show("adam eps 1e-6", t);
    t = base; t.adam_lerp = true; t.clamp_div = true; show("lerp+clampdiv (f64)", t);
    t = {}; show("our float32", t);
    for (int seed = 1; seed <= 4; ++seed) { t = {}; t.grad_noise = 1.2e-7; t.seed = seed; show("f32 noise 1.2e-7", t); }
  }
}

}  // namespace
}  // namespace rc
