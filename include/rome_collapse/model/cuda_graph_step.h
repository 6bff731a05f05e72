#pragma once
// One optimisation step recorded once as a CUDA graph and replayed: the step of ROME's value
// optimisation is ~2000 small kernels whose launch cost (not their arithmetic) bounds it on a GPU.
//
// While active, everything runs on a side stream (graphs cannot be recorded on the default one),
// so the owner runs its eager warm-up iterations, the recording and the replays inside the object's
// lifetime and calls finish() before using the results elsewhere. Inactive (CPU, a libtorch built
// without CUDA, or $ROME_CUDA_GRAPHS=0) it does nothing and the caller stays eager.
#include <functional>
#include <memory>

#include <c10/core/Device.h>

namespace rc {

class CudaGraphStep {
 public:
  CudaGraphStep(c10::Device device, bool wanted);
  ~CudaGraphStep();
  CudaGraphStep(const CudaGraphStep&) = delete;
  CudaGraphStep& operator=(const CudaGraphStep&) = delete;

  bool active() const;
  bool recorded() const;
  // Records `body` (runs its host code once, launches nothing); replay() then runs it.
  void record(const std::function<void()>& body);
  void replay();
  // Waits for the side stream and returns to the default one (idempotent).
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Whether this libtorch was built with CUDA graphs support (PyTorch's own, with CUDA).
bool cuda_graphs_compiled();

}  // namespace rc
