#pragma once
// Command implementations, kept apart from main.cpp so that only main.cpp pays for CLI11.
// Each returns the process exit code; input errors propagate as rc::InputError.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/analysis/key_analysis.h"
#include "rome_collapse/analysis/key_statistics_run.h"

namespace rc::cli {

// Exit codes shared by every command.
enum ExitCode : int { kOk = 0, kCheckFailed = 1, kInputError = 2, kNumericError = 3, kInternalError = 4 };

struct ModelArgs {
  std::string model;
  std::string tokenizer;           // empty: the model's directory
  std::optional<bool> add_bos;     // empty: the tokenizer's convention
  std::string device = "cpu";      // "cpu" | "cuda"
  std::string dtype = "float32";
};

struct GenerateArgs {
  ModelArgs model;
  std::string prompt;
  int64_t max_new_tokens = 50;
  int64_t top_k = 0;
  uint64_t seed = 0;
};
int run_generate(const GenerateArgs& args);

struct PerplexityArgs {
  ModelArgs model;
  std::string texts;
  int64_t batch_size = 10;
};
int run_perplexity(const PerplexityArgs& args);

// Flags override the config's fields; without --config the flags are the whole config.
struct EditArgs {
  std::string config;
  std::string hparams;                  // native / ROME JSON / EasyEdit YAML hparams file
  std::string model, tokenizer;         // empty: the config's
  std::optional<bool> add_bos;
  std::string device, dtype;            // empty: the config's
  std::vector<std::string> methods;     // repeatable, or a comma list
  int64_t layer = -1;                   // -1: the config's
  std::string prompt, subject, target_new, target_true;  // an inline request
  std::string dataset;                  // a request / dataset file, with case_ids
  std::vector<int64_t> case_ids;
  std::string out;          // empty: JSON to stdout
  std::string save_delta;   // safetensors with u and v
  std::string save_model;   // directory for the edited checkpoint
  bool reference_path = false;
};
int run_edit_command(const EditArgs& args);

struct CheckArgs {
  std::string config;
  std::string requests;        // request file; empty: the config's requests
  CheckThresholds thresholds;  // the defaults are check.h's
  std::string json;            // report file; empty: none
};
int run_check_command(const CheckArgs& args);

struct KeysArgs {
  std::string config;
  std::string requests;
  std::string out;                  // .npz
  std::string json;                 // analysis JSON; empty: none
  KeyAnalysisOptions options;       // --prefix-tokens; the defaults are key_analysis.h's
};
int run_keys_command(const KeysArgs& args);

// The options of `stats` are those of the run itself (analysis/key_statistics_run.h).
using StatsArgs = KeyStatisticsRun;
int run_stats(const StatsArgs& args);

struct BatchArgs {
  std::string config;
  std::string out;          // result directory (default: batch-<config stem>)
  std::string shard;        // "i/n": records whose dataset position % n == i
  int64_t max_edits = 0;    // > 0: stop after this many new edits (resume later)
  bool one_by_one = false;  // the path before issue 19: each edit alone, every pass from the first layer
};
int run_batch(const BatchArgs& args);

struct MergeArgs {
  std::vector<std::string> dirs;
  std::string out;
};
int run_merge(const MergeArgs& args);

struct BenchArgs {
  std::string models = "tiny-gpt2,tiny-llama,tiny-gptj,stories260K,gpt2-small";
  std::string shared = "../shared";
  int64_t steps = 0;     // 0: each model's own setting
  int64_t repeats = 1;
  std::string device = "cpu";
  std::string dtype = "float32";  // weights and activations; δ and the update stay float32
  std::string out;
  bool throughput = false;  // a batch's edits per hour, one-by-one vs grouped path (cmd_bench_throughput.cpp)
  int64_t cases = 20;       // --throughput: CounterFact records (x 3 methods)
  int64_t group_size = 8;   // --throughput: requests per group on the grouped path
  std::string runs;         // --throughput: keep the two batch directories here (default: a temporary folder)
};
int run_bench(const BenchArgs& args);
nlohmann::json bench_throughput(const std::string& model, const BenchArgs& args);

struct TokenizeArgs {
  std::string model, tokenizer;        // one of them: the model's folder, or the tokenizer's folder/file
  std::optional<std::string> text;     // --text, or
  std::string file;                    // --file
  bool special = false;                // add the tokenizer's special tokens (BOS, ...)
  std::optional<std::string> subject;  // report its token span
  int64_t bench_repeats = 0;           // > 0: time encoding instead (fastest of N)
};
int run_tokenize(const TokenizeArgs& args);

// [commands: new argument structs and run_* declarations above this line]

}  // namespace rc::cli
