#pragma once
// One `stats` run: C (key_statistics.h) of a layer over a corpus into ROME's .npz, resumable like
// a batch (util/run_guard.h's ResumableRun): the output locked, a checkpoint every K texts and on
// SIGINT/SIGTERM, and a rerun of the same command continuing from it to the same bytes.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace rc {

struct KeyStatisticsRun {
  std::string model, tokenizer;      // tokenizer empty: the model's directory
  std::optional<bool> add_bos;       // empty: the tokenizer's convention
  std::string device = "cpu";
  std::string compute_dtype = "float32";
  int64_t layer = -1;
  std::vector<std::string> corpus;   // text files (read_texts formats), in order
  int64_t samples = 0;               // 0: every text
  int64_t max_length = 0;            // 0: the model's context
  int64_t batch_size = 0;            // 0: 1 on cpu, 16 on cuda
  std::string storage_dtype = "float32";  // of mom2.mom2: float32 or float64
  int64_t checkpoint_every = 200;    // texts between checkpoints
  int64_t stop_after_texts = 0;      // > 0: stop as if interrupted after this many texts (tests)
  std::filesystem::path out;
};

// Exit status of a run stopped by stop_after_texts after writing its checkpoint (as if by SIGINT);
// a real signal gives 128 + its number (130 SIGINT, 143 SIGTERM).
inline constexpr int kStatsInterruptedExit = 130;

// Runs (or resumes) the collection; progress on stderr. Returns 0 when the output is written, else
// the exit status of the stop (the checkpoint is then written). InputError for bad input.
int collect_key_statistics(const KeyStatisticsRun& run);

}  // namespace rc
