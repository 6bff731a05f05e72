#pragma once
// C: the uncentered second moment of the rewrite module's inputs, E[k kᵀ] = mom2 / count, stored
// as ROME publishes it (NumPy .npz with mom2.mom2, mom2.count, mom2.constructor, sample_size).
#include <cstdint>
#include <filesystem>
#include <string>

#include <ATen/core/Tensor.h>

namespace rc {

struct SecondMoment {
  at::Tensor mom2;          // [F, F] float64, Σ k kᵀ over `count` tokens
  int64_t count = 0;
  std::string constructor;  // ROME's "mom2.constructor" string
  int64_t sample_size = 0;  // texts the statistics were collected over
  std::string source;       // file read from
  std::string sha256;       // of that file
};

// C⁻¹ key in float64 by Cholesky of C = mom2/count (+ ridge·mean(diag C)·I); NumericError for a
// singular or indefinite C, naming the source and suggesting hparams.mom2_ridge.
at::Tensor solve_second_moment(const SecondMoment& moment, const at::Tensor& key, double ridge);

}  // namespace rc
