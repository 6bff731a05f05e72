#pragma once
// Adam exactly as torch.optim.Adam (default betas and eps, no weight decay, amsgrad off) updates
// one parameter: the optimiser of v*'s δ (ROME_REFERENCE.md, step 4).
#include <cstdint>

#include <ATen/core/Tensor.h>

namespace rc {

struct AdamState {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  at::Tensor exp_avg, exp_avg_sq;  // m and v, zeros before the first step
  int64_t step = 0;

  // One step on `param` in place:  m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²;
  // param −= lr · (m / (1−β1^t)) / (sqrt(v) / sqrt(1−β2^t) + eps).
  void update(at::Tensor& param, const at::Tensor& grad);

  // The same step with the step count and the bias corrections as device tensors, for a step
  // recorded as a CUDA graph (a graph freezes host scalars). prepare_on_device() runs once, after
  // at least one update() and before the recording.
  at::Tensor device_step, negative_lr;  // float64 scalars on the parameter's device
  void prepare_on_device(const at::Tensor& param);
  void update_on_device(at::Tensor& param, const at::Tensor& grad);
};

}  // namespace rc
