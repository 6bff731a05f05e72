#include "rome_collapse/rome/adam.h"

#include <cmath>

#include <ATen/ATen.h>

namespace rc {

void AdamState::update(at::Tensor& param, const at::Tensor& grad) {
  if (!exp_avg.defined()) {
    exp_avg = at::zeros_like(param);
    exp_avg_sq = at::zeros_like(param);
  }
  ++step;
  exp_avg.mul_(beta1).add_(grad, 1 - beta1);
  exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
  const double bias_correction1 = 1 - std::pow(beta1, step);
  const double bias_correction2_sqrt = std::sqrt(1 - std::pow(beta2, step));
  at::Tensor denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps);
  param.addcdiv_(exp_avg, denom, -lr / bias_correction1);
}

void AdamState::prepare_on_device(const at::Tensor& param) {
  const auto options = at::TensorOptions().dtype(at::kDouble).device(param.device());
  device_step = at::scalar_tensor(double(step), options);
  negative_lr = at::scalar_tensor(-lr, options);
}

void AdamState::update_on_device(at::Tensor& param, const at::Tensor& grad) {
  device_step.add_(1);
  exp_avg.mul_(beta1).add_(grad, 1 - beta1);
  exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
  at::Tensor bias_correction1 = 1 - at::pow(beta1, device_step);
  at::Tensor bias_correction2_sqrt = at::sqrt(1 - at::pow(beta2, device_step));
  at::Tensor denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps);
  param.addcdiv_(exp_avg * (negative_lr / bias_correction1), denom);  // (value * t1) / t2, as update()
}

}  // namespace rc
