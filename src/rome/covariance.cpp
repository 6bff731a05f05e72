#include "rome_collapse/rome/covariance.h"

#include <cmath>
#include <limits>
#include <sstream>

#include <ATen/ATen.h>
#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "rome_collapse/util/error.h"

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

}  // namespace rc
