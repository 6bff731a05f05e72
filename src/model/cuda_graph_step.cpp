#include "rome_collapse/model/cuda_graph_step.h"

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
struct CudaGraphStep::Impl {
  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false);
  std::optional<c10::cuda::CUDAStreamGuard> on_side_stream;
  at::cuda::CUDAGraph graph;
  bool recorded = false;
};

CudaGraphStep::CudaGraphStep(c10::Device device, bool wanted) {
  const char* setting = std::getenv("ROME_CUDA_GRAPHS");
  if (!wanted || !device.is_cuda() || (setting && std::strcmp(setting, "0") == 0)) return;
  torch::cuda::synchronize();  // the side stream starts after everything queued on the default one
  impl_ = std::make_unique<Impl>();
  impl_->on_side_stream.emplace(impl_->stream);
}

void CudaGraphStep::record(const std::function<void()>& body) {
  if (!impl_ || impl_->recorded) throw std::logic_error("CudaGraphStep::record: inactive or already recorded");
  impl_->stream.synchronize();  // the warm-up iterations have finished before anything is recorded
  impl_->graph.capture_begin();
  try {
    body();
  } catch (...) {
    try {
      impl_->graph.capture_end();  // leave stream-capture mode, or every later CUDA call fails
    } catch (...) {
    }
    throw;
  }
  impl_->graph.capture_end();
  impl_->recorded = true;
}

void CudaGraphStep::replay() {
  if (!impl_ || !impl_->recorded) throw std::logic_error("CudaGraphStep::replay: nothing recorded");
  impl_->graph.replay();
}

void CudaGraphStep::finish() {
  if (!impl_ || !impl_->on_side_stream) return;
  impl_->stream.synchronize();
  impl_->on_side_stream.reset();
}
#else
struct CudaGraphStep::Impl {};

CudaGraphStep::CudaGraphStep(c10::Device, bool) {}

void CudaGraphStep::record(const std::function<void()>&) {
  throw std::logic_error("CudaGraphStep::record: this libtorch has no CUDA graphs");
}

void CudaGraphStep::replay() { throw std::logic_error("CudaGraphStep::replay: this libtorch has no CUDA graphs"); }

void CudaGraphStep::finish() {}
#endif

CudaGraphStep::~CudaGraphStep() { finish(); }

bool CudaGraphStep::active() const { return impl_ != nullptr; }

bool CudaGraphStep::recorded() const {
#if ROME_WITH_CUDA
  return impl_ && impl_->recorded;
#else
  return false;
#endif
}

}  // namespace rc
