// rome-collapse: command-line entry point. Parsing only; the commands live in cmd_*.cpp.
#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "process.h"
#include "rome_collapse/util/error.h"

namespace {

void add_model_options(CLI::App* command, rc::cli::ModelArgs& args) {
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
  app.set_version_flag("--version", std::string("rome-collapse ") + ROME_COLLAPSE_VERSION);

  rc::cli::GenerateArgs generate_args;
  auto* generate = app.add_subcommand("generate", "generate text (greedy unless --top-k)");
  add_model_options(generate, generate_args.model);
  generate->add_option("--prompt", generate_args.prompt, "prompt text (default: empty, BOS only)");
  generate->add_option("--max-new-tokens", generate_args.max_new_tokens, "tokens to generate")
      ->required()->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  generate->add_option("--top-k", generate_args.top_k, "sample from the top-k tokens")->check(CLI::NonNegativeNumber);
  generate->add_option("--seed", generate_args.seed, "seed for sampling");

  rc::cli::PerplexityArgs perplexity_args;
  auto* perplexity = app.add_subcommand("perplexity", "the paper's perplexity over a text file");
  add_model_options(perplexity, perplexity_args.model);
  perplexity->add_option("--texts", perplexity_args.texts, "ME-PPL JSON, JSONL with \"text\", or plain lines")
      ->required();
  perplexity->add_option("--batch-size", perplexity_args.batch_size, "texts per forward pass")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));

  rc::cli::EditArgs edit_args;
  auto* edit = app.add_subcommand("edit", "one ROME / C-ROME edit (or a small comparison) with collapse metrics");
  edit->add_option("--config", edit_args.config, "edit config JSON (see README)")->required();
  edit->add_option("--out", edit_args.out, "result JSON (written atomically; default: stdout)");
  edit->add_option("--save-delta", edit_args.save_delta, "write u and v to this .safetensors file");
  edit->add_option("--save-model", edit_args.save_model, "write the edited checkpoint to this directory");
  edit->add_flag("--reference-path", edit_args.reference_path,
                 "optimise v* as the paper's code does (every layer, full logits) instead of the fast path");

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

  rc::cli::KeysArgs keys_args;
  auto* keys = app.add_subcommand("keys", "dump keys to .npz and run the first-token (position vs context) experiment");
  keys->add_option("--config", keys_args.config, "edit config JSON")->required();
  keys->add_option("--requests", keys_args.requests, "request file (as for check)");
  keys->add_option("--out", keys_args.out, ".npz with the unprefixed/prefixed keys and C^-1 kbar")->required();
  keys->add_option("--json", keys_args.json, "analysis JSON (statistics, PCA projection for the figures)");
  keys->add_option("--prefix-tokens", keys_args.prefix_tokens, "k values of the position experiment (default 1 2 4 8)")
      ->check(CLI::PositiveNumber);

  rc::cli::StatsArgs stats_args;
  auto* stats = app.add_subcommand(
      "stats", "second moment C of a layer's rewrite-module inputs over a corpus (ROME's .npz, resumable)");
  stats->add_option("--model", stats_args.model.model, "Hugging Face directory or llama2.c checkpoint")->required();
  stats->add_option("--tokenizer", stats_args.model.tokenizer,
                    "tokenizer directory or file (default: the model's directory)");
  stats->add_flag_function(
      "--add-bos,!--no-bos", [&stats_args](int64_t count) { stats_args.model.add_bos = count > 0; },
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
  stats->add_option("--dtype", stats_args.dtype, "stored dtype of mom2.mom2 (default float32, as ROME publishes)")
      ->check(CLI::IsMember({"float32", "float64"}));
  stats->add_option("--checkpoint-every", stats_args.checkpoint_every,
                    "write the resumable <out>.partial.npz every K texts (default 200)")
      ->check(CLI::PositiveNumber);
  stats->add_option("--device", stats_args.model.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  stats->add_option("--compute-dtype", stats_args.model.dtype, "dtype of the forward pass (default float32)")
      ->check(CLI::IsMember({"float32", "float64", "bfloat16", "float16"}));
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
