#pragma once
// Command implementations, kept apart from main.cpp so that only main.cpp pays for CLI11.
// Each returns the process exit code; input errors propagate as rc::InputError.
#include <cstdint>
#include <optional>
#include <string>

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

struct EditArgs {
  std::string config;
  std::string out;          // empty: JSON to stdout
  std::string save_delta;   // safetensors with u and v
  std::string save_model;   // directory for the edited checkpoint
  bool reference_path = false;
};
int run_edit_command(const EditArgs& args);

// [commands: new argument structs and run_* declarations above this line]

}  // namespace rc::cli
