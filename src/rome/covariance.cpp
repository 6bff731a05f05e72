#include "rome_collapse/rome/covariance.h"

#include <cmath>
#include <limits>
#include <sstream>

#include <ATen/ATen.h>
#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "rome_collapse/io/npz.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc {

struct CholeskyFactor {
  double ridge = 0;
  const void* mom2_data = nullptr;  // which matrix and count it factorises
  int64_t count = 0;
  Eigen::LLT<Eigen::MatrixXd> llt;
};

namespace {

std::string number(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

std::shared_ptr<const CholeskyFactor> factorise(const SecondMoment& moment, double ridge) {
  const int64_t dim = moment.mom2.size(0);
  const std::string advice = "; set hparams.mom2_ridge (e.g. 1e-4, relative to the mean diagonal of C) or collect "
                             "statistics over more text (rome-collapse stats --samples)";
  at::Tensor c = (moment.mom2.to(at::kDouble).cpu() / double(moment.count)).contiguous();  // [F, F]
  Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> c_map(c.data_ptr<double>(),
                                                                                               dim, dim);
  Eigen::MatrixXd matrix = c_map;
  const double max_diagonal = matrix.diagonal().maxCoeff();
  if (ridge > 0) matrix.diagonal().array() += ridge * matrix.diagonal().mean();
  auto factor = std::make_shared<CholeskyFactor>();
  factor->ridge = ridge;
  factor->mom2_data = moment.mom2.data_ptr();
  factor->count = moment.count;
  factor->llt.compute(matrix);
  if (factor->llt.info() != Eigen::Success)
    throw NumericError(moment.source + ": the second moment C (" + std::to_string(dim) + "x" + std::to_string(dim) +
                       ", count " + std::to_string(moment.count) + ") is singular or not positive definite" + advice);
  // LLT only fails on a pivot <= 0; rounding can leave a rank-deficient C with tiny positive
  // pivots instead (fewer tokens than F), whose solve is noise. Pivot d_i = L_ii².
  const Eigen::VectorXd pivots = factor->llt.matrixLLT().diagonal().array().square();
  const double threshold = double(dim) * std::numeric_limits<double>::epsilon() * std::max(max_diagonal, 0.0);
  if (!(pivots.minCoeff() > threshold))
    throw NumericError(moment.source + ": the second moment C (" + std::to_string(dim) + "x" + std::to_string(dim) +
                       ", count " + std::to_string(moment.count) + ") is numerically singular (smallest Cholesky pivot " +
                       number(pivots.minCoeff()) + ", largest diagonal " + number(max_diagonal) + ")" + advice);
  return factor;
}

}  // namespace

at::Tensor solve_second_moment(const SecondMoment& moment, const at::Tensor& key, double ridge) {
  if (moment.mom2.dim() != 2 || moment.mom2.size(0) != moment.mom2.size(1))
    throw InputError(moment.source + ": member 'mom2.mom2' must be a square [F, F] matrix");
  const int64_t dim = moment.mom2.size(0);
  if (key.numel() != dim)
    throw InputError(moment.source + ": member 'mom2.mom2' is " + std::to_string(dim) + "x" + std::to_string(dim) +
                     " but the edited layer's rewrite module has " + std::to_string(key.numel()) +
                     " inputs (d_ff): statistics of another model or layer?");
  if (moment.count <= 0) throw InputError(moment.source + ": member 'mom2.count' is " + std::to_string(moment.count));
  if (ridge < 0 || !std::isfinite(ridge)) throw InputError("hparams.mom2_ridge: must be a finite number >= 0");
  const bool cached = moment.factor && moment.factor->ridge == ridge &&
                      moment.factor->mom2_data == moment.mom2.data_ptr() && moment.factor->count == moment.count;
  if (!cached) moment.factor = factorise(moment, ridge);
  at::Tensor k = key.to(at::kDouble).cpu().contiguous();  // [F]
  Eigen::Map<const Eigen::VectorXd> k_map(k.data_ptr<double>(), dim);
  Eigen::VectorXd solution = moment.factor->llt.solve(k_map);
  if (!solution.allFinite()) throw NumericError(moment.source + ": C^-1 k is not finite; set hparams.mom2_ridge");
  return at::from_blob(solution.data(), {dim}, at::kDouble).clone();
}

SecondMoment read_second_moment_npz(const std::filesystem::path& path) {
  auto members = read_npz(path);
  const std::string file = path.string();
  for (const char* key : {"mom2.mom2", "mom2.count"})
    if (!members.count(key))
      fail_input(file, std::string("missing member '") + key +
                           "' (expected ROME's layout: mom2.mom2, mom2.count, mom2.constructor, sample_size)");
  auto scalar = [&](const char* key) {
    const NpyArray& array = members.at(key);
    if (array.numel() != 1) throw InputError(array.where + ": expected a single integer, shape has " +
                                             std::to_string(array.numel()) + " elements");
    at::Tensor value = array.tensor();
    if (at::isFloatingType(value.scalar_type())) {
      const double v = value.to(at::kDouble).item<double>();
      if (v != std::floor(v) || !(std::fabs(v) < 9.0e18))  // also NaN and values no int64 holds
        throw InputError(array.where + ": expected an integer, found " + std::to_string(v));
    }
    return value.to(at::kLong).reshape({}).item<int64_t>();
  };
  SecondMoment moment;
  moment.source = file;
  moment.sha256 = sha256_file(path);
  const NpyArray& mom2 = members.at("mom2.mom2");
  const at::Tensor values = mom2.tensor();
  if (!at::isFloatingType(values.scalar_type()))
    throw InputError(mom2.where + ": expected a float32/float64 matrix, found dtype '" + mom2.descr + "'");
  if (values.dim() != 2 || values.size(0) != values.size(1))
    throw InputError(mom2.where + ": must be a square [F, F] matrix, found shape " + std::string(c10::str(values.sizes())));
  moment.mom2 = values.to(at::kDouble);
  if (!at::isfinite(moment.mom2).all().item<bool>()) throw InputError(mom2.where + ": has NaN or Inf");
  moment.count = scalar("mom2.count");
  if (moment.count <= 0)
    throw InputError(members.at("mom2.count").where + ": must be positive, found " + std::to_string(moment.count));
  if (members.count("mom2.constructor")) moment.constructor = members.at("mom2.constructor").string();
  if (members.count("sample_size")) moment.sample_size = scalar("sample_size");
  return moment;
}

void write_second_moment_npz(const std::filesystem::path& path, const at::Tensor& mom2_sum, int64_t count,
                             int64_t sample_size, at::ScalarType stored_dtype) {
  write_npz(path, {{"mom2.mom2", serialize_npy(mom2_sum.to(stored_dtype))},
                   {"mom2.count", serialize_npy(at::scalar_tensor(count, at::kLong))},
                   {"mom2.constructor", serialize_npy_string(kSecondMomentConstructor)},
                   {"sample_size", serialize_npy(at::scalar_tensor(sample_size, at::kLong))}});
}

}  // namespace rc
