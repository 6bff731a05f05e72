// `rome-collapse bench`: per-edit time by phase and peak memory, the optimised path against the
// reference-equivalent path (every layer recomputed each step, full logits everywhere, one padded
// batch) side by side in one run, with the difference of their v*.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "rome_collapse/eval/perplexity.h"
#include "rome_collapse/io/text_file.h"
#include "rome_collapse/model/builtin_model.h"
#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/model/device_memory.h"
#include "rome_collapse/rome/edit.h"
#include "rome_collapse/rome/templates.h"
#include "rome_collapse/rome/value.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc::cli {
namespace {

// The 21 templates of the reference runs: "{}" and 20 fixed "<text>. {}" prefixes.
const std::vector<std::string>& kTemplates = fixed_example_templates();

// Seeded random weights in a real model's shape (model_shape); "gpt2-tiny" is the demo's, not a bench model.
bool is_random_shape(const std::string& name) {
  const auto& names = model_shape_names();
  return name != "gpt2-tiny" && std::find(names.begin(), names.end(), name) != names.end();
}

std::string random_shape_list() {
  std::string list;
  for (const auto& name : model_shape_names())
    if (is_random_shape(name)) list += (list.empty() ? "" : ", ") + name;
  return list;
}

struct BenchModel {
  std::string name;
  LoadedModel loaded;
  EditConfig config;
  std::string perplexity_texts;  // empty: no perplexity timing
};

BenchModel make_model(const std::string& name, const std::filesystem::path& shared, int64_t steps_override,
                      const std::string& device, const std::string& dtype) {
  BenchModel bench;
  bench.name = name;
  auto& hp = bench.config.hparams;
  EditRequest request{"{} is a citizen of", "Leonardo", "Japan", "Italy"};
  auto need_shared = [&](const std::string& relative) {
    auto path = shared / relative;
    if (!std::filesystem::exists(path))
      throw InputError(path.string() + ": not found (bench model \"" + name + "\" needs ../shared; pass --shared DIR)");
    return path.string();
  };
  if (name == "tiny-gpt2" || name == "tiny-llama" || name == "tiny-gptj") {
    bench.loaded = load_model(need_shared("reference/" + name), need_shared("tokenizers/gpt2"), false, device, dtype);
    hp.layer = 1, hp.v_loss_layer = 3, hp.v_num_grad_steps = 20, hp.v_weight_decay = 0.5;
    bench.perplexity_texts = need_shared("data/me-ppl/ME-PPL_50.json");
  } else if (name == "stories260K") {
    bench.loaded = load_model(need_shared("models/stories260K/stories260K.bin"),
                              need_shared("models/stories260K/tok512.model"), std::nullopt, device, dtype);
    hp.layer = 2, hp.v_loss_layer = 4, hp.v_num_grad_steps = 25, hp.v_weight_decay = 1e-3;
    request = {"{} loved to play with her", "Lily", "dog", "toys"};
  } else if (is_random_shape(name)) {
    // Seeded random weights in the real shapes, created on the device; the embedded byte-level
    // tokenizer drives them (ids < 1000), the vocabulary keeps the real size so that the LM head
    // costs what it really costs. Layers and steps: the paper's hparams (configs/).
    bench.loaded.tokenizer = builtin_demo_tokenizer();
    LoadOptions options;
    options.device = parse_device(device);
    options.dtype = parse_dtype(dtype);
    check_dtype_supported(options.dtype, options.device, dtype);
    bench.loaded.model = build_causal_lm(random_checkpoint(model_shape(name), 0, options.device), options);
    bench.loaded.model_path = "random:" + name;
    bench.loaded.tokenizer_path = "builtin:demo-gpt2";
    configure_threads(&bench.loaded.model->config());
    hp.v_num_grad_steps = 20, hp.v_weight_decay = 0.5;
    if (name == "gpt2-small") hp.layer = 5, hp.v_loss_layer = 11;
    if (name == "gpt2-xl") hp.layer = 17, hp.v_loss_layer = 47;
    if (name == "gptj-6b") hp.layer = 5, hp.v_loss_layer = 27;
    if (name == "llama2-7b") hp.layer = 5, hp.v_loss_layer = 31, hp.v_num_grad_steps = 25, hp.v_weight_decay = 1e-3;
    // EasyEdit's hparams/ROME/{llama3-8b,qwen2.5-7b,mistral-7b}.yaml; Pythia as GPT-J (configs/).
    if (name == "llama3-8b" || name == "mistral-7b")
      hp.layer = 5, hp.v_loss_layer = 31, hp.v_num_grad_steps = 25, hp.v_weight_decay = 1e-3;
    if (name == "qwen2.5-7b") hp.layer = 5, hp.v_loss_layer = 27, hp.v_num_grad_steps = 25, hp.v_weight_decay = 1e-3;
    if (name == "pythia-6.9b") hp.layer = 5, hp.v_loss_layer = 31;
  } else {
    throw InputError("bench: unknown model \"" + name + "\" (tiny-gpt2, tiny-llama, tiny-gptj, stories260K, " +
                     random_shape_list() + ")");
  }
  hp.early_stop_loss = -1;  // every edit runs all its steps, so the two paths do equal work
  if (steps_override > 0) hp.v_num_grad_steps = steps_override;
  bench.config.request = request;
  bench.config.templates.fixed = kTemplates;
  bench.config.record_timings = true;
  bench.config.source = "bench:" + name;
  bench.config.device = device;
  return bench;
}

}  // namespace

namespace {

// Untimed warm-up of both paths (2 steps): the first CUDA work of a process pays for the library
// handles and kernel loading, which would otherwise land on whichever path runs first.
void warm_up(BenchModel& bench, const EditContext& context) {
  EditConfig warmup = bench.config;
  warmup.hparams.v_num_grad_steps = 2;
  for (ForwardPath path : {ForwardPath::Reference, ForwardPath::Optimized}) {
    EditOptions options;
    options.path = path;
    options.evaluate = false;
    run_edit(bench.loaded, warmup, warmup.request, EditMethod::CRome, context, options);
  }
}

struct PathTiming {
  nlohmann::json summary;  // edit_s, timings_s, peak_mib, peak_mib_by_phase, s_per_step
  at::Tensor v_star;
  double seconds = 0;      // the fastest repeat
};

// The fastest of `repeats` edits on one path; entry["iterations"] gets the v* iterations.
PathTiming time_path(BenchModel& bench, const EditContext& context, ForwardPath path, int64_t repeats,
                     nlohmann::json& entry) {
  EditOptions options;
  options.path = path;
  options.evaluate = false;
  PathTiming timing;
  double best = 1e300;
  nlohmann::json best_timings, best_peaks;
  for (int64_t repeat = 0; repeat < repeats; ++repeat) {
    auto start = std::chrono::steady_clock::now();
    EditOutcome outcome = run_edit(bench.loaded, bench.config, bench.config.request, EditMethod::CRome, context, options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (seconds < best)
      best = seconds, best_timings = outcome.result["timings_s"], best_peaks = outcome.result["peak_memory_mib"];
    timing.v_star = outcome.value.v_star;
    entry["iterations"] = outcome.value.iterations;
  }
  double peak = 0;  // over the phases of the edit (run_edit measures each phase on the model's device)
  for (const auto& item : best_peaks.items()) peak = std::max(peak, item.value().get<double>());
  timing.seconds = best;
  timing.summary = {{"edit_s", best}, {"timings_s", best_timings}, {"peak_mib", peak}, {"peak_mib_by_phase", best_peaks},
                    {"s_per_step", best_timings["value_optimisation"].get<double>() /
                                       double(entry["iterations"].get<int64_t>())}};
  return timing;
}

void print_rows(const std::string& name, const nlohmann::json& entry) {
  const double ratio = entry["speedup"].get<double>(), v_diff = entry["v_star_max_rel_diff"].get<double>();
  for (const char* path_name : {"reference", "optimized"}) {
    const auto& r = entry[path_name];
    std::printf("%-12s %-10s %9.3f %9.3f %9.3f %9.4f %10.0f %8s %12.2e\n", name.c_str(), path_name,
                r["timings_s"]["keys"].get<double>(), r["timings_s"]["value_optimisation"].get<double>(),
                r["edit_s"].get<double>(), r["s_per_step"].get<double>(), r["peak_mib"].get<double>(),
                std::string(path_name) == "optimized" ? (std::to_string(ratio).substr(0, 4) + "x").c_str() : "",
                std::string(path_name) == "optimized" ? v_diff : 0.0);
  }
}

// One model's report entry: load, the work per step, both paths, the perplexity pass.
nlohmann::json bench_model(const std::string& name, const BenchArgs& args) {
  const c10::Device device = parse_device(args.device);
  reset_peak_memory(device);
  auto load_start = std::chrono::steady_clock::now();
  BenchModel bench = make_model(name, args.shared, args.steps, args.device, args.dtype);
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  const double load_peak = peak_memory_mib(device);
  EditContext context;
  context.templates = kTemplates;
  nlohmann::json entry = {{"model", name}, {"device", args.device}, {"dtype", args.dtype}, {"load_s", load_seconds}, {"load_peak_mib", load_peak},
                          {"threads", at::get_num_threads()}, {"layer", bench.config.hparams.layer},
                          {"steps", bench.config.hparams.v_num_grad_steps}};
  {  // the work per step: reference rows x padded length against rows x ragged window
    const ValueBatch batch = build_value_batch(*bench.loaded.tokenizer, bench.loaded.add_bos, bench.config.request,
                                               kTemplates, bench.config.hparams.kl_prompt, bench.loaded.pad_id(),
                                               c10::Device(c10::kCPU));
    entry["rows"] = batch.ids.size(0);
    entry["padded_length"] = batch.ids.size(1);
    entry["window"] = recompute_window(batch);
  }
  if (args.device != "cpu") warm_up(bench, context);
  const PathTiming reference = time_path(bench, context, ForwardPath::Reference, args.repeats, entry);
  const PathTiming optimized = time_path(bench, context, ForwardPath::Optimized, args.repeats, entry);
  entry["reference"] = reference.summary;
  entry["optimized"] = optimized.summary;
  entry["speedup"] = reference.seconds / optimized.seconds;
  entry["v_star_max_rel_diff"] =
      ((reference.v_star - optimized.v_star).abs().max() / reference.v_star.abs().max()).item<double>();
  if (!bench.perplexity_texts.empty()) {
    auto ids = perplexity_token_ids(*bench.loaded.tokenizer, read_texts(bench.perplexity_texts),
                                    bench.loaded.model->config().max_positions);
    auto start = std::chrono::steady_clock::now();
    perplexity(*bench.loaded.model, ids, 10);
    entry["perplexity_me_ppl_50_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return entry;
}

}  // namespace

int run_bench(const BenchArgs& args) {
  configure_threads();
  std::vector<std::string> names;
  std::stringstream list(args.models);
  for (std::string name; std::getline(list, name, ',');)
    if (!name.empty()) names.push_back(name);
  nlohmann::json report = nlohmann::json::array();
  std::printf("%-12s %-10s %9s %9s %9s %9s %10s %8s %12s\n", "model", "path", "keys s", "v* s", "edit s", "s/step",
              "peak MiB", "ratio", "max|dv*|rel");
  for (const auto& name : names) {
    const nlohmann::json entry = bench_model(name, args);
    print_rows(name, entry);
    std::fflush(stdout);
    report.push_back(entry);
  }
  if (!args.out.empty()) write_file_atomic(args.out, json_text(report) + "\n");
  return kOk;
}

}  // namespace rc::cli
