#pragma once
// Collecting C: Σ k kᵀ of the rewrite module's input over every real token of a corpus, as ROME's
// layer_stats does, with checkpoints so that a long run can be interrupted and resumed.
//
// Legend: N = real (non-pad) tokens of a batch, F = rewrite-module inputs (d_ff).
//
// Determinism: the sum is a float64 accumulation over batches in a fixed order. A run resumed
// from a checkpoint sees the same batches (checkpoints fall on batch boundaries) and therefore
// ends with the same bits as an uninterrupted run.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/rome/key_source.h"

namespace rc {

// Keys at `layer` of every real token of the model inputs of `sequences` (one padded batch,
// forward stopped after `layer`; for T5 the appended "</s>" counts, as in Hugging Face's inputs),
// in (sequence, position) order: [N, F] in the model's dtype.
// Empty sequences contribute nothing; all empty gives [0, F].
at::Tensor rewrite_keys_of_all_tokens(const KeySource& source, const std::vector<std::vector<int64_t>>& sequences,
                                      int64_t layer);

// Running Σ k kᵀ in float64, the token count and how many texts are done.
class SecondMomentCollector {
 public:
  // dim = F; the sum lives on `device` (the model's, so that the products run there).
  explicit SecondMomentCollector(int64_t dim, c10::Device device = c10::Device(c10::kCPU));

  // sum += keysᵀ keys (float64), count += N.  keys: [N, F], any floating dtype.
  void add_keys(const at::Tensor& keys);
  void add_texts_done(int64_t texts) { texts_done_ += texts; }

  int64_t dim() const { return dim_; }
  int64_t count() const { return count_; }
  int64_t texts_done() const { return texts_done_; }
  at::Tensor sum() const;  // [F, F] float64 on the CPU

  // Checkpoint .npz: mom2_sum (float64 [F, F]), count, texts_done, fingerprint (JSON text),
  // format; written atomically. The fingerprint says which run it belongs to.
  void save_checkpoint(const std::filesystem::path& path, const nlohmann::json& fingerprint) const;
  // InputError naming the file when it is unreadable, malformed, of another size, or when its
  // fingerprint differs from `fingerprint` (listing the fields that differ and telling the user
  // to delete the file to start over).
  static SecondMomentCollector restore(const std::filesystem::path& path, const nlohmann::json& fingerprint,
                                       int64_t dim, c10::Device device = c10::Device(c10::kCPU));

  // ROME's layout (mom2.mom2 in stored_dtype, mom2.count, mom2.constructor, sample_size = texts done).
  void write_second_moment(const std::filesystem::path& path, at::ScalarType stored_dtype) const;

 private:
  int64_t dim_;
  at::Tensor sum_;  // [F, F] float64
  int64_t count_ = 0;
  int64_t texts_done_ = 0;
};

// Where the checkpoint of an output file lives: "<out>.partial.npz".
std::filesystem::path checkpoint_path_for(const std::filesystem::path& out);

}  // namespace rc
