// rome-collapse: command-line entry point. Parsing only; the commands live in cmd_*.cpp.
#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "commands.h"
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

int main(int argc, char** argv) {
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
    // [dispatch: one line per subcommand above this line]
  } catch (const rc::InputError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return rc::cli::kInputError;
  } catch (const rc::NumericError& e) {
    std::cerr << "numerical error: " << e.what() << "\n";
    return rc::cli::kNumericError;
  } catch (const std::exception& e) {
    std::cerr << "internal error: " << e.what() << "\n";
    return rc::cli::kInternalError;
  }
  return rc::cli::kInputError;
}
