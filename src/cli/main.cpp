// rome-collapse: command-line entry point. Parsing only; the commands live in cmd_*.cpp.
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "process.h"
#include "rome_collapse/experiment/config_schema.h"
#include "rome_collapse/rome/hparams.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/fields.h"

namespace {

const char* const kExitCodes =
    "Exit codes: 0 success; 1 a check failed; 2 bad usage or input (the message names the file and field);\n"
    "3 a numerical failure (NaN/Inf, singular C); 4 an internal error; 128+signal after SIGINT/SIGTERM\n"
    "(batch, stats).";

// --help of the commands that read a config: every field with its default (from the one
// declaration of each struct) and the exit codes.
std::string config_help() {
  // RomeHparams' v_loss_layer default (47, GPT-2-XL's) applies only to structs built in code; a
  // config that leaves it out gets the model's last layer (fit_to_model).
  std::string hparams = rc::help_fields(rc::RomeHparams{});
  const std::string v_loss_default = "v_loss_layer (default 47)";
  if (const size_t at = hparams.find(v_loss_default); at != std::string::npos)
    hparams.replace(at, v_loss_default.size(), "v_loss_layer (default: the model's last layer)");
  return "Config fields (JSON, or YAML for .yaml/.yml; [the commands that use a field]; the others accept\n"
         "and ignore it; paths are relative to the config; an unknown field is refused):\n" +
         rc::help_fields(rc::ConfigFile{}) +
         "hparams fields (native; defaults: the paper's GPT-2-XL settings):\n" + hparams +
         "  also ROME's hparams JSON and EasyEdit's ROME YAML fields: layers ([L]), fact_token (subject_last),\n"
         "  context_template_length_params, rewrite/layer/mlp/attn_module_tmp, ln_f_module, lm_head_module\n"
         "  (checked against the model), mom2_dataset, mom2_n_samples, mom2_dtype, stats_dir, alg_name (ROME),\n"
         "  model_name, max_length; device, model_parallel/fp16 (false), batch_size (1) accepted, unused.\n\n" +
         kExitCodes;
}

// A default in --help: "0.5", "0".
std::string number_text(double value) {
  std::ostringstream text;
  text << value;
  return text.str();
}

// --threads N: intra-op threads (the same as ROME_THREADS=N), set before any model is loaded.
void add_threads_option(CLI::App* command, int64_t& threads) {
  command->add_option("--threads", threads, "CPU threads (default: by model size; same as ROME_THREADS)")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}));
}

// --device and --dtype (the compute dtype).
void add_device_options(CLI::App* command, std::string& device, std::string& dtype, const std::string& dtype_help) {
  command->add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  command->add_option("--dtype", dtype, dtype_help)->check(CLI::IsMember({"float32", "float64", "bfloat16", "float16"}));
}

// --tokenizer and --add-bos/--no-bos, beside a model.
void add_tokenizer_options(CLI::App* command, std::string& tokenizer, std::optional<bool>& add_bos,
                           const std::string& bos_help) {
  command->add_option("--tokenizer", tokenizer, "tokenizer directory or file (default: the model's directory)");
  command->add_flag_function(
      "--add-bos,!--no-bos", [&add_bos](int64_t count) { add_bos = count > 0; }, bos_help);
}

// The last options of a command that reads a config: --threads, and the config's fields in --help.
void add_config_footer(CLI::App* command, int64_t& threads) {
  add_threads_option(command, threads);
  command->footer(config_help());
}

void add_model_options(CLI::App* command, rc::cli::ModelArgs& args, int64_t& threads) {
  add_threads_option(command, threads);
  command->add_option("--model", args.model, "Hugging Face directory or llama2.c checkpoint")->required();
  add_tokenizer_options(command, args.tokenizer, args.add_bos, "prepend BOS (default: the tokenizer's convention)");
  add_device_options(command, args.device, args.dtype, "compute dtype");
}

// Every subcommand's argument struct, filled by CLI11.
struct CommandArgs {
  rc::cli::GenerateArgs generate;
  rc::cli::PerplexityArgs perplexity;
  rc::cli::EditArgs edit;
  rc::cli::CheckArgs check;
  rc::cli::KeysArgs keys;
  rc::cli::StatsArgs stats;
  std::string stats_old_dtype;  // --dtype meant the storage dtype here, the compute dtype everywhere else
  rc::cli::BatchArgs batch;
  rc::cli::MergeArgs merge;
  rc::cli::BenchArgs bench;
  rc::cli::TokenizeArgs tokenize;
  int64_t threads = 0;
};

void add_generate(CLI::App& app, CommandArgs& a) {
  auto* generate = app.add_subcommand("generate", "generate text (greedy unless --top-k)");
  add_model_options(generate, a.generate.model, a.threads);
  generate->add_option("--prompt", a.generate.prompt, "prompt text (default: empty, BOS only)");
  generate->add_option("--max-new-tokens", a.generate.max_new_tokens, "tokens to generate")
      ->required()->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  generate->add_option("--top-k", a.generate.top_k, "sample from the top-k tokens")->check(CLI::NonNegativeNumber);
  generate->add_option("--seed", a.generate.seed, "seed for sampling");
}

void add_perplexity(CLI::App& app, CommandArgs& a) {
  auto* perplexity = app.add_subcommand("perplexity", "the paper's perplexity over a text file");
  add_model_options(perplexity, a.perplexity.model, a.threads);
  perplexity->add_option("--texts", a.perplexity.texts, "ME-PPL JSON, JSONL with \"text\", or plain lines")
      ->required();
  perplexity->add_option("--batch-size", a.perplexity.batch_size, "texts per forward pass")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
}

void add_edit(CLI::App& app, CommandArgs& a) {
  rc::cli::EditArgs& args = a.edit;
  auto* edit = app.add_subcommand("edit", "one ROME / C-ROME edit (or a small comparison) with collapse metrics");
  edit->add_option("--config", args.config, "config file (JSON or YAML; fields below); flags override it");
  edit->add_option("--hparams", args.hparams, "hparams file: native JSON, ROME's hparams JSON or EasyEdit's YAML");
  edit->add_option("--model", args.model,
                   "model directory, llama2.c .bin, hub-cache folder or Hugging Face name in the local cache");
  add_tokenizer_options(edit, args.tokenizer, args.add_bos, "prepend BOS (default: the tokenizer's convention)");
  add_device_options(edit, args.device, args.dtype, "compute dtype");
  edit->add_option("--method", args.methods, "rome, c-rome, c-rome-prefix (repeatable, or a comma list)");
  edit->add_option("--layer", args.layer, "edited layer (overrides hparams)")->check(CLI::NonNegativeNumber);
  edit->add_option("--prompt", args.prompt, "inline request: prompt with {} for the subject");
  edit->add_option("--subject", args.subject, "inline request: subject");
  edit->add_option("--target-new", args.target_new, "inline request: the new object");
  edit->add_option("--target-true", args.target_true, "inline request: the true object (optional)");
  edit->add_option("--dataset", args.dataset, "request file: CounterFact, ZsRE, EasyEdit records or requests");
  edit->add_option("--case-id", args.case_ids, "edit this record of --dataset (repeatable)");
  edit->add_option("--out", args.out, "result JSON (written atomically; default: stdout)");
  edit->add_option("--save-delta", args.save_delta, "write u and v to this .safetensors file");
  edit->add_option("--save-model", args.save_model, "write the edited checkpoint to this directory");
  edit->add_flag("--reference-path", args.reference_path,
                 "optimise v* as the paper's code does (every layer, full logits) instead of the fast path");
  add_config_footer(edit, a.threads);
}

void add_check(CLI::App& app, CommandArgs& a) {
  auto* check = app.add_subcommand("check", "collapse guard: ROME vs C-ROME denominators from the keys alone (exit 1 on failure)");
  check->add_option("--config", a.check.config, "edit config JSON (model, hparams.layer, templates, requests)")
      ->required();
  check->add_option("--requests", a.check.requests,
                    "request file: JSON list / JSONL of requests, CounterFact, EasyEdit or ZsRE records");
  const rc::CheckThresholds defaults;
  check->add_option("--min-abs-denominator", a.check.thresholds.min_abs_denominator,
                    "fail when |ROME denominator| is below this (default " + number_text(defaults.min_abs_denominator) +
                        ": off)")
      ->check(CLI::NonNegativeNumber);
  check->add_option("--min-ratio", a.check.thresholds.min_ratio,
                    "fail when |ROME denominator| / |C-ROME denominator| is below this (default " +
                        number_text(defaults.min_ratio) + ")")
      ->check(CLI::NonNegativeNumber);
  check->add_option("--json", a.check.json, "write every request's numbers and verdict here");
  add_config_footer(check, a.threads);
}

void add_keys(CLI::App& app, CommandArgs& a) {
  auto* keys = app.add_subcommand("keys", "dump keys to .npz and run the first-token (position vs context) experiment");
  keys->add_option("--config", a.keys.config, "edit config JSON")->required();
  keys->add_option("--requests", a.keys.requests, "request file (as for check)");
  keys->add_option("--out", a.keys.out, ".npz with the unprefixed/prefixed keys and C^-1 kbar")->required();
  keys->add_option("--json", a.keys.json, "analysis JSON (statistics, PCA projection for the figures)");
  std::string default_prefix_tokens;
  for (int64_t k : a.keys.options.prefix_tokens) default_prefix_tokens += (default_prefix_tokens.empty() ? "" : " ") + std::to_string(k);
  keys->add_option("--prefix-tokens", a.keys.options.prefix_tokens,
                   "k values of the position experiment (default " + default_prefix_tokens + ")")
      ->check(CLI::PositiveNumber);
  add_config_footer(keys, a.threads);
}

void add_stats(CLI::App& app, CommandArgs& a) {
  rc::cli::StatsArgs& args = a.stats;
  auto* stats = app.add_subcommand(
      "stats", "second moment C of a layer's rewrite-module inputs over a corpus (ROME's .npz, resumable)");
  stats->add_option("--model", args.model, "Hugging Face directory or llama2.c checkpoint")->required();
  add_tokenizer_options(stats, args.tokenizer, args.add_bos,
                        "prepend BOS to every text (default: the tokenizer's convention)");
  stats->add_option("--layer", args.layer, "layer L whose MLP output projection's inputs are collected")
      ->required()->check(CLI::NonNegativeNumber);
  stats->add_option("--corpus", args.corpus,
                    "text files, one text per record (ME-PPL JSON, JSON list, JSONL \"text\", or plain lines)")
      ->required()->expected(1, -1);
  stats->add_option("--samples", args.samples, "use the first N texts (default: all)")->check(CLI::PositiveNumber);
  stats->add_option("--max-length", args.max_length, "cut each text at this many tokens (default: model context)")
      ->check(CLI::PositiveNumber);
  stats->add_option("--batch-size", args.batch_size, "texts per forward pass (default: 1 on cpu, 16 on cuda)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  stats->add_option("--storage-dtype", args.storage_dtype, "stored dtype of mom2.mom2 (default float32, as ROME publishes)")
      ->check(CLI::IsMember({"float32", "float64"}));
  stats->add_option("--dtype", a.stats_old_dtype)->group("");
  stats->add_option("--checkpoint-every", args.checkpoint_every,
                    "write the resumable <out>.partial.npz every K texts (default 200)")
      ->check(CLI::PositiveNumber);
  stats->add_option("--device", args.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  stats->add_option("--compute-dtype", args.compute_dtype, "dtype of the forward pass (default float32)")
      ->check(CLI::IsMember({"float32", "float64", "bfloat16", "float16"}));
  add_threads_option(stats, a.threads);
  stats->add_option("--stop-after-texts", args.stop_after_texts)->group("");  // tests: simulated interruption
  stats->add_option("--out", args.out, "output .npz (mom2.mom2, mom2.count, mom2.constructor, sample_size)")
      ->required();
}

void add_batch_and_merge(CLI::App& app, CommandArgs& a) {
  auto* batch = app.add_subcommand("batch", "the paper's tables over a dataset (resumable, shardable)");
  batch->add_option("--config", a.batch.config, "batch config JSON: an edit config plus dataset, methods, cases")
      ->required();
  batch->add_option("--out", a.batch.out, "result directory (default: batch-<config name>); reruns resume it");
  batch->add_option("--shard", a.batch.shard, "i/n: only the records whose dataset position % n == i");
  batch->add_option("--max-edits", a.batch.max_edits, "stop after this many new edits (rerun to continue)")
      ->check(CLI::NonNegativeNumber);
  batch->add_flag("--one-by-one", a.batch.one_by_one,
                  "each edit alone and every evaluation pass from the first layer (the slower path, for comparison)");
  add_config_footer(batch, a.threads);
  auto* merge = app.add_subcommand("merge", "join the result directories of batch shards and recompute the tables");
  merge->add_option("dirs", a.merge.dirs, "batch result directories")->required();
  merge->add_option("--out", a.merge.out, "merged result directory")->required();
}

void add_bench(CLI::App& app, CommandArgs& a) {
  auto* bench = app.add_subcommand("bench", "time edits: optimised path vs the paper's reference-equivalent path");
  bench->add_option("--models", a.bench.models,
                    "comma list of tiny-gpt2, tiny-llama, tiny-gptj, stories260K, gpt2-small, gpt2-xl, gptj-6b, llama2-7b, "
                    "llama3-8b, qwen2.5-7b, mistral-7b, pythia-6.9b");
  bench->add_option("--shared", a.bench.shared, "the shared/ folder with the reference models");
  bench->add_option("--steps", a.bench.steps, "optimisation iterations (default: each model's setting)")
      ->check(CLI::NonNegativeNumber);
  bench->add_option("--repeats", a.bench.repeats, "edits per path; the fastest is reported")
      ->check(CLI::Range(int64_t{1}, int64_t{100}));
  bench->add_option("--device", a.bench.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  bench->add_option("--dtype", a.bench.dtype, "model dtype (default float32)")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  bench->add_option("--out", a.bench.out, "JSON report");
  bench->add_flag("--throughput", a.bench.throughput,
                  "a CounterFact batch (3 methods, ME-PPL_50, the paper's evaluation): edits per hour on the "
                  "one-by-one path and the grouped path, per phase");
  bench->add_option("--cases", a.bench.cases, "--throughput: CounterFact records")->check(CLI::Range(int64_t{1}, int64_t{1000}));
  bench->add_option("--group-size", a.bench.group_size, "--throughput: requests optimised together")
      ->check(CLI::Range(int64_t{1}, int64_t{256}));
  bench->add_option("--runs", a.bench.runs, "--throughput: keep both batch directories in this folder");
  add_threads_option(bench, a.threads);
}

void add_tokenize(CLI::App& app, CommandArgs& a) {
  rc::cli::TokenizeArgs& args = a.tokenize;
  auto* tokenize = app.add_subcommand("tokenize", "ids, pieces and byte offsets of a text as JSON (and a subject's span)");
  auto* tok_model = tokenize->add_option("--model", args.model, "model folder (its tokenizer)");
  tokenize->add_option("--tokenizer", args.tokenizer, "tokenizer folder or file")->excludes(tok_model);
  auto* tok_text = tokenize->add_option("--text", args.text, "text to split");
  tokenize->add_option("--file", args.file, "file whose text to split")->excludes(tok_text);
  tokenize->add_flag("--special", args.special, "add the special tokens the tokenizer adds (BOS, ...)");
  tokenize->add_option("--subject", args.subject, "report the tokens covering this subject");
  tokenize->add_option("--bench", args.bench_repeats, "time N encodes (vs the previous GPT-2 reader)")->check(CLI::Range(1, 1000));
}

// The chosen subcommand's exit code.
int dispatch(const CLI::App& app, const CommandArgs& a) {
  auto chosen = [&](const char* name) { return app.got_subcommand(name); };
  if (chosen("generate")) return rc::cli::run_generate(a.generate);
  if (chosen("perplexity")) return rc::cli::run_perplexity(a.perplexity);
  if (chosen("edit")) return rc::cli::run_edit_command(a.edit);
  if (chosen("check")) return rc::cli::run_check_command(a.check);
  if (chosen("keys")) return rc::cli::run_keys_command(a.keys);
  if (chosen("stats")) return rc::cli::run_stats(a.stats);
  if (chosen("batch")) return rc::cli::run_batch(a.batch);
  if (chosen("merge")) return rc::cli::run_merge(a.merge);
  if (chosen("bench")) return rc::cli::run_bench(a.bench);
  if (chosen("tokenize")) return rc::cli::run_tokenize(a.tokenize);
  // [dispatch: one line per subcommand above this line]
  return rc::cli::kInputError;
}

// Runs the chosen command; its errors become messages and exit codes (README "Exit codes").
int run_reporting_errors(const CLI::App& app, const CommandArgs& args) {
  try {
    return dispatch(app, args);
  } catch (const rc::InputError& e) {
    std::cerr << "error: " << rc::excerpt(e.what(), 4000) << "\n";
    return rc::cli::kInputError;
  } catch (const rc::NumericError& e) {
    std::cerr << "numerical error: " << rc::excerpt(e.what(), 4000) << "\n";
    return rc::cli::kNumericError;
  } catch (const std::exception& e) {
    std::cerr << "internal error: " << rc::excerpt(e.what(), 4000) << "\n";
    return rc::cli::kInternalError;
  }
}

}  // namespace

int run_command(int argc, char** argv);

int main(int argc, char** argv) {
  rc::cli::ignore_write_signals();
  return rc::cli::finish_standard_output(run_command(argc, argv));
}

int run_command(int argc, char** argv) {
  CLI::App app{"rome-collapse: ROME / C-ROME model editing and the study of its collapse"};
  app.require_subcommand(1);
  app.footer(kExitCodes);
  app.set_version_flag("--version", std::string("rome-collapse ") + ROME_COLLAPSE_VERSION);
  CommandArgs args;
  add_generate(app, args);
  add_perplexity(app, args);
  add_edit(app, args);
  add_check(app, args);
  add_keys(app, args);
  add_stats(app, args);
  add_batch_and_merge(app, args);
  add_bench(app, args);
  add_tokenize(app, args);
  // [register: new subcommands are added above this line, one add_* function each]

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : rc::cli::kInputError;
  }
  if (app.got_subcommand("stats") && !args.stats_old_dtype.empty()) {
    std::cerr << "error: stats --dtype is ambiguous: use --storage-dtype " << args.stats_old_dtype
              << " for the stored dtype of mom2.mom2 (what --dtype meant here), or --compute-dtype for the forward pass\n";
    return rc::cli::kInputError;
  }
  if (args.threads > 0) setenv("ROME_THREADS", std::to_string(args.threads).c_str(), 1);  // read by configure_threads
  return run_reporting_errors(app, args);
}
