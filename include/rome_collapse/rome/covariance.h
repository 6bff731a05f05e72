#pragma once
// C: the uncentered second moment of the rewrite module's inputs, E[k kᵀ] = mom2 / count, stored
// as ROME publishes it (NumPy .npz with mom2.mom2, mom2.count, mom2.constructor, sample_size).
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace rc {

struct CholeskyFactor;  // Cholesky factor of C (+ ridge), kept between edits of one run

struct SecondMoment {
  at::Tensor mom2;          // [F, F] float64, Σ k kᵀ over `count` tokens
  int64_t count = 0;
  std::string constructor;  // ROME's "mom2.constructor" string
  int64_t sample_size = 0;  // texts the statistics were collected over
  std::string source;       // file read from
  std::string sha256;       // of that file
  // Factorising a [F, F] matrix costs F³/3 (seconds for GPT-2-XL's F = 6400), so the factor of
  // the last ridge used is kept; filled lazily by solve_second_moment.
  mutable std::shared_ptr<const CholeskyFactor> factor;
};

// C⁻¹ key in float64 by Cholesky of C = mom2/count (+ ridge·mean(diag C)·I). InputError when the
// key's size is not F (statistics of another model or layer); NumericError for a singular or
// indefinite C (a pivot ≤ F·ε·max diag C), naming the source and suggesting hparams.mom2_ridge.
at::Tensor solve_second_moment(const SecondMoment& moment, const at::Tensor& key, double ridge);

inline constexpr char kSecondMomentConstructor[] = "rome_collapse.SecondMoment";

// ROME's layout: mom2.mom2 [F, F], mom2.count, mom2.constructor, sample_size.
SecondMoment read_second_moment_npz(const std::filesystem::path& path);
void write_second_moment_npz(const std::filesystem::path& path, const at::Tensor& mom2_sum, int64_t count,
                             int64_t sample_size, at::ScalarType stored_dtype = at::kFloat);

}  // namespace rc
