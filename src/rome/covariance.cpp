#include "rome_collapse/rome/covariance.h"

#include <ATen/ATen.h>
#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "rome_collapse/util/error.h"

namespace rc {

at::Tensor solve_second_moment(const SecondMoment& moment, const at::Tensor& key, double ridge) {
  const int64_t dim = moment.mom2.size(0);
  if (moment.mom2.dim() != 2 || moment.mom2.size(1) != dim || key.numel() != dim)
    throw InputError(moment.source + ": second moment is " + std::to_string(moment.mom2.size(0)) + "x" +
                     std::to_string(moment.mom2.size(-1)) + " but the key has " + std::to_string(key.numel()) +
                     " entries (statistics of another model or layer?)");
  if (moment.count <= 0) throw InputError(moment.source + ": mom2.count is " + std::to_string(moment.count));
  at::Tensor c = (moment.mom2.to(at::kDouble).cpu() / double(moment.count)).contiguous();
  Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> c_map(c.data_ptr<double>(),
                                                                                               dim, dim);
  Eigen::MatrixXd matrix = c_map;
  if (ridge > 0) matrix.diagonal().array() += ridge * matrix.diagonal().mean();
  Eigen::LLT<Eigen::MatrixXd> cholesky(matrix);
  if (cholesky.info() != Eigen::Success)
    throw NumericError(moment.source + ": the second moment C is singular or not positive definite; set " +
                       "hparams.mom2_ridge (e.g. 1e-4) or collect statistics over more text");
  at::Tensor k = key.to(at::kDouble).cpu().contiguous();
  Eigen::Map<const Eigen::VectorXd> k_map(k.data_ptr<double>(), dim);
  Eigen::VectorXd solution = cholesky.solve(k_map);
  if (!solution.allFinite()) throw NumericError(moment.source + ": C^-1 k is not finite");
  return at::from_blob(solution.data(), {dim}, at::kDouble).clone();
}

}  // namespace rc
