// rome-collapse: command-line entry point. Parsing only; the commands live in cmd_*.cpp.
#include <cstdlib>
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

// --threads N: intra-op threads (the same as ROME_THREADS=N), set before any model is loaded.
void add_threads_option(CLI::App* command, int64_t& threads) {
  command->add_option("--threads", threads, "CPU threads (default: by model size; same as ROME_THREADS)")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}));
}

void add_model_options(CLI::App* command, rc::cli::ModelArgs& args, int64_t& threads) {
  add_threads_option(command, threads);
  command->add_option("--model", args.model, "Hugging Face directory or llama2.c checkpoint")->required();
  command->add_option("--tokenizer", args.tokenizer,
                      "tokenizer directory or file (default: the model's directory)");
  command->add_flag_function(
      "--add-bos,!--no-bos", [&args](int64_t count) { args.add_bos = count > 0; },
      "prepend BOS (default: the tokenizer's convention)");
  command->add_option("--device", args.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  command->add_option("--dtype", args.dtype, "compute dtype")
      ->check(CLI::IsMember({"float32", "float64", "bfloat16", "float16"}));
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
  int64_t threads = 0;
  app.set_version_flag("--version", std::string("rome-collapse ") + ROME_COLLAPSE_VERSION);

  rc::cli::GenerateArgs generate_args;
  auto* generate = app.add_subcommand("generate", "generate text (greedy unless --top-k)");
  add_model_options(generate, generate_args.model, threads);
  generate->add_option("--prompt", generate_args.prompt, "prompt text (default: empty, BOS only)");
  generate->add_option("--max-new-tokens", generate_args.max_new_tokens, "tokens to generate")
      ->required()->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  generate->add_option("--top-k", generate_args.top_k, "sample from the top-k tokens")->check(CLI::NonNegativeNumber);
  generate->add_option("--seed", generate_args.seed, "seed for sampling");

  rc::cli::PerplexityArgs perplexity_args;
  auto* perplexity = app.add_subcommand("perplexity", "the paper's perplexity over a text file");
  add_model_options(perplexity, perplexity_args.model, threads);
  perplexity->add_option("--texts", perplexity_args.texts, "ME-PPL JSON, JSONL with \"text\", or plain lines")
      ->required();
  perplexity->add_option("--batch-size", perplexity_args.batch_size, "texts per forward pass")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));

  rc::cli::EditArgs edit_args;
  auto* edit = app.add_subcommand("edit", "one ROME / C-ROME edit (or a small comparison) with collapse metrics");
  edit->add_option("--config", edit_args.config, "config file (JSON or YAML; fields below); flags override it");
  edit->add_option("--hparams", edit_args.hparams, "hparams file: native JSON, ROME's hparams JSON or EasyEdit's YAML");
  edit->add_option("--model", edit_args.model,
                   "model directory, llama2.c .bin, hub-cache folder or Hugging Face name in the local cache");
  edit->add_option("--tokenizer", edit_args.tokenizer, "tokenizer directory or file (default: the model's directory)");
  edit->add_flag_function(
      "--add-bos,!--no-bos", [&edit_args](int64_t count) { edit_args.add_bos = count > 0; },
      "prepend BOS (default: the tokenizer's convention)");
  edit->add_option("--device", edit_args.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  edit->add_option("--dtype", edit_args.dtype, "compute dtype")
      ->check(CLI::IsMember({"float32", "float64", "bfloat16", "float16"}));
  edit->add_option("--method", edit_args.methods, "rome, c-rome, c-rome-prefix (repeatable, or a comma list)");
  edit->add_option("--layer", edit_args.layer, "edited layer (overrides hparams)")->check(CLI::NonNegativeNumber);
  edit->add_option("--prompt", edit_args.prompt, "inline request: prompt with {} for the subject");
  edit->add_option("--subject", edit_args.subject, "inline request: subject");
  edit->add_option("--target-new", edit_args.target_new, "inline request: the new object");
  edit->add_option("--target-true", edit_args.target_true, "inline request: the true object (optional)");
  edit->add_option("--dataset", edit_args.dataset, "request file: CounterFact, ZsRE, EasyEdit records or requests");
  edit->add_option("--case-id", edit_args.case_ids, "edit this record of --dataset (repeatable)");
  edit->add_option("--out", edit_args.out, "result JSON (written atomically; default: stdout)");
  edit->add_option("--save-delta", edit_args.save_delta, "write u and v to this .safetensors file");
  edit->add_option("--save-model", edit_args.save_model, "write the edited checkpoint to this directory");
  edit->add_flag("--reference-path", edit_args.reference_path,
                 "optimise v* as the paper's code does (every layer, full logits) instead of the fast path");
  add_threads_option(edit, threads);
  edit->footer(config_help());

  rc::cli::CheckArgs check_args;
  auto* check = app.add_subcommand("check", "collapse guard: ROME vs C-ROME denominators from the keys alone (exit 1 on failure)");
  check->add_option("--config", check_args.config, "edit config JSON (model, hparams.layer, templates, requests)")
      ->required();
  check->add_option("--requests", check_args.requests,
                    "request file: JSON list / JSONL of requests, CounterFact, EasyEdit or ZsRE records");
  check->add_option("--min-abs-denominator", check_args.min_abs_denominator,
                    "fail when |ROME denominator| is below this (default 0: off)")
      ->check(CLI::NonNegativeNumber);
  check->add_option("--min-ratio", check_args.min_ratio,
                    "fail when |ROME denominator| / |C-ROME denominator| is below this (default 0.5)")
      ->check(CLI::NonNegativeNumber);
  check->add_option("--json", check_args.json, "write every request's numbers and verdict here");
  add_threads_option(check, threads);
  check->footer(config_help());

  rc::cli::KeysArgs keys_args;
  auto* keys = app.add_subcommand("keys", "dump keys to .npz and run the first-token (position vs context) experiment");
  keys->add_option("--config", keys_args.config, "edit config JSON")->required();
  keys->add_option("--requests", keys_args.requests, "request file (as for check)");
  keys->add_option("--out", keys_args.out, ".npz with the unprefixed/prefixed keys and C^-1 kbar")->required();
  keys->add_option("--json", keys_args.json, "analysis JSON (statistics, PCA projection for the figures)");
  keys->add_option("--prefix-tokens", keys_args.prefix_tokens, "k values of the position experiment (default 1 2 4 8)")
      ->check(CLI::PositiveNumber);
  add_threads_option(keys, threads);
  keys->footer(config_help());

  rc::cli::StatsArgs stats_args;
  auto* stats = app.add_subcommand(
      "stats", "second moment C of a layer's rewrite-module inputs over a corpus (ROME's .npz, resumable)");
  stats->add_option("--model", stats_args.model, "Hugging Face directory or llama2.c checkpoint")->required();
  stats->add_option("--tokenizer", stats_args.tokenizer,
                    "tokenizer directory or file (default: the model's directory)");
  stats->add_flag_function(
      "--add-bos,!--no-bos", [&stats_args](int64_t count) { stats_args.add_bos = count > 0; },
      "prepend BOS to every text (default: the tokenizer's convention)");
  stats->add_option("--layer", stats_args.layer, "layer L whose MLP output projection's inputs are collected")
      ->required()->check(CLI::NonNegativeNumber);
  stats->add_option("--corpus", stats_args.corpus,
                    "text files, one text per record (ME-PPL JSON, JSON list, JSONL \"text\", or plain lines)")
      ->required()->expected(1, -1);
  stats->add_option("--samples", stats_args.samples, "use the first N texts (default: all)")
      ->check(CLI::PositiveNumber);
  stats->add_option("--max-length", stats_args.max_length, "cut each text at this many tokens (default: model context)")
      ->check(CLI::PositiveNumber);
  stats->add_option("--batch-size", stats_args.batch_size, "texts per forward pass (default: 1 on cpu, 16 on cuda)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  stats->add_option("--storage-dtype", stats_args.storage_dtype, "stored dtype of mom2.mom2 (default float32, as ROME publishes)")
      ->check(CLI::IsMember({"float32", "float64"}));
  std::string stats_old_dtype;  // --dtype meant the storage dtype here, the compute dtype everywhere else
  stats->add_option("--dtype", stats_old_dtype)->group("");
  stats->add_option("--checkpoint-every", stats_args.checkpoint_every,
                    "write the resumable <out>.partial.npz every K texts (default 200)")
      ->check(CLI::PositiveNumber);
  stats->add_option("--device", stats_args.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  stats->add_option("--compute-dtype", stats_args.compute_dtype, "dtype of the forward pass (default float32)")
      ->check(CLI::IsMember({"float32", "float64", "bfloat16", "float16"}));
  add_threads_option(stats, threads);
  stats->add_option("--stop-after-texts", stats_args.stop_after_texts)->group("");  // tests: simulated interruption
  stats->add_option("--out", stats_args.out, "output .npz (mom2.mom2, mom2.count, mom2.constructor, sample_size)")
      ->required();

  rc::cli::BatchArgs batch_args;
  auto* batch = app.add_subcommand("batch", "the paper's tables over a dataset (resumable, shardable)");
  batch->add_option("--config", batch_args.config, "batch config JSON: an edit config plus dataset, methods, cases")
      ->required();
  batch->add_option("--out", batch_args.out, "result directory (default: batch-<config name>); reruns resume it");
  batch->add_option("--shard", batch_args.shard, "i/n: only the records whose dataset position % n == i");
  batch->add_option("--max-edits", batch_args.max_edits, "stop after this many new edits (rerun to continue)")
      ->check(CLI::NonNegativeNumber);
  add_threads_option(batch, threads);
  batch->footer(config_help());
  rc::cli::MergeArgs merge_args;
  auto* merge = app.add_subcommand("merge", "join the result directories of batch shards and recompute the tables");
  merge->add_option("dirs", merge_args.dirs, "batch result directories")->required();
  merge->add_option("--out", merge_args.out, "merged result directory")->required();

  rc::cli::BenchArgs bench_args;
  auto* bench = app.add_subcommand("bench", "time edits: optimised path vs the paper's reference-equivalent path");
  bench->add_option("--models", bench_args.models,
                    "comma list of tiny-gpt2, tiny-llama, tiny-gptj, stories260K, gpt2-small, gpt2-xl, gptj-6b, llama2-7b, "
                    "llama3-8b, qwen2.5-7b, mistral-7b, pythia-6.9b");
  bench->add_option("--shared", bench_args.shared, "the shared/ folder with the reference models");
  bench->add_option("--steps", bench_args.steps, "optimisation iterations (default: each model's setting)")
      ->check(CLI::NonNegativeNumber);
  bench->add_option("--repeats", bench_args.repeats, "edits per path; the fastest is reported")
      ->check(CLI::Range(int64_t{1}, int64_t{100}));
  bench->add_option("--device", bench_args.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  bench->add_option("--dtype", bench_args.dtype, "model dtype (default float32)")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  bench->add_option("--out", bench_args.out, "JSON report");
  add_threads_option(bench, threads);

  rc::cli::TokenizeArgs tok_args;
  auto* tokenize = app.add_subcommand("tokenize", "ids, pieces and byte offsets of a text as JSON (and a subject's span)");
  auto* tok_model = tokenize->add_option("--model", tok_args.model, "model folder (its tokenizer)");
  tokenize->add_option("--tokenizer", tok_args.tokenizer, "tokenizer folder or file")->excludes(tok_model);
  auto* tok_text = tokenize->add_option("--text", tok_args.text, "text to split");
  tokenize->add_option("--file", tok_args.file, "file whose text to split")->excludes(tok_text);
  tokenize->add_flag("--special", tok_args.special, "add the special tokens the tokenizer adds (BOS, ...)");
  tokenize->add_option("--subject", tok_args.subject, "report the tokens covering this subject");
  tokenize->add_option("--bench", tok_args.bench_repeats, "time N encodes (vs the previous GPT-2 reader)")->check(CLI::Range(1, 1000));

  // [register: new subcommands are added above this line, one block each]

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : rc::cli::kInputError;
  }
  if (*stats && !stats_old_dtype.empty()) {
    std::cerr << "error: stats --dtype is ambiguous: use --storage-dtype " << stats_old_dtype
              << " for the stored dtype of mom2.mom2 (what --dtype meant here), or --compute-dtype for the forward pass\n";
    return rc::cli::kInputError;
  }
  if (threads > 0) setenv("ROME_THREADS", std::to_string(threads).c_str(), 1);  // read by configure_threads
  try {
    if (*generate) return rc::cli::run_generate(generate_args);
    if (*perplexity) return rc::cli::run_perplexity(perplexity_args);
    if (*edit) return rc::cli::run_edit_command(edit_args);
    if (*check) return rc::cli::run_check_command(check_args);
    if (*keys) return rc::cli::run_keys_command(keys_args);
    if (*stats) return rc::cli::run_stats(stats_args);
    if (*batch) return rc::cli::run_batch(batch_args);
    if (*merge) return rc::cli::run_merge(merge_args);
    if (*bench) return rc::cli::run_bench(bench_args);
    if (*tokenize) return rc::cli::run_tokenize(tok_args);
    // [dispatch: one line per subcommand above this line]
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
  return rc::cli::kInputError;
}
