#include "rome_collapse/model/captured_step.h"

#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>

#include <torch/cuda.h>

#if ROME_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace rc {

bool cuda_graphs_compiled() { return ROME_WITH_CUDA != 0; }

#if ROME_WITH_CUDA
struct CapturedStep::Impl {
  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false);
  std::optional<c10::cuda::CUDAStreamGuard> on_side_stream;
  at::cuda::CUDAGraph graph;
  bool captured = false;
};

CapturedStep::CapturedStep(c10::Device device, bool wanted) {
  const char* setting = std::getenv("ROME_CUDA_GRAPHS");
  if (!wanted || !device.is_cuda() || (setting && std::strcmp(setting, "0") == 0)) return;
  torch::cuda::synchronize();  // the side stream starts after everything queued on the default one
  impl_ = std::make_unique<Impl>();
  impl_->on_side_stream.emplace(impl_->stream);
}

void CapturedStep::capture(const std::function<void()>& body) {
  if (!impl_ || impl_->captured) throw std::logic_error("CapturedStep::capture: inactive or already captured");
  impl_->stream.synchronize();  // the warm-up iterations have finished before anything is recorded
  impl_->graph.capture_begin();
  try {
    body();
  } catch (...) {
    try {
      impl_->graph.capture_end();  // leave capture mode, or every later CUDA call fails
    } catch (...) {
    }
    throw;
  }
  impl_->graph.capture_end();
  impl_->captured = true;
}

void CapturedStep::replay() {
  if (!impl_ || !impl_->captured) throw std::logic_error("CapturedStep::replay: nothing captured");
  impl_->graph.replay();
}

void CapturedStep::finish() {
  if (!impl_ || !impl_->on_side_stream) return;
  impl_->stream.synchronize();
  impl_->on_side_stream.reset();
}
#else
struct CapturedStep::Impl {};

CapturedStep::CapturedStep(c10::Device, bool) {}

void CapturedStep::capture(const std::function<void()>&) {
  throw std::logic_error("CapturedStep::capture: this libtorch has no CUDA graphs");
}

void CapturedStep::replay() { throw std::logic_error("CapturedStep::replay: this libtorch has no CUDA graphs"); }

void CapturedStep::finish() {}
#endif

CapturedStep::~CapturedStep() { finish(); }

bool CapturedStep::active() const { return impl_ != nullptr; }

bool CapturedStep::captured() const {
#if ROME_WITH_CUDA
  return impl_ && impl_->captured;
#else
  return false;
#endif
}

}  // namespace rc
