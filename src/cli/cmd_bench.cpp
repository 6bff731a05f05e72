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

#include "bench_models.h"
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
  if (!args.throughput)
    std::printf("%-12s %-10s %9s %9s %9s %9s %10s %8s %12s\n", "model", "path", "keys s", "v* s", "edit s", "s/step",
                "peak MiB", "ratio", "max|dv*|rel");
  for (const auto& name : names) {
    const nlohmann::json entry = args.throughput ? bench_throughput(name, args) : bench_model(name, args);
    if (!args.throughput) print_rows(name, entry);
    std::fflush(stdout);
    report.push_back(entry);
  }
  if (!args.out.empty()) write_file_atomic(args.out, json_text(report) + "\n");
  return kOk;
}

}  // namespace rc::cli
