#include "rome_collapse/model/device_memory.h"

#include <fstream>
#include <string>

#if ROME_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/util/Exception.h>
#endif

namespace rc {

void reset_peak_memory(c10::Device device) {
#if ROME_WITH_CUDA
  if (device.is_cuda()) {
    try {
      c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
    } catch (const c10::Error&) {
      // Nothing allocated on the GPU yet (the allocator starts lazily): no peak to reset.
    }
    return;
  }
#endif
  if (!device.is_cpu()) return;
  std::ofstream clear("/proc/self/clear_refs");  // "5" resets VmHWM
  if (clear) clear << "5";
}

double peak_memory_mib(c10::Device device) {
#if ROME_WITH_CUDA
  if (device.is_cuda()) {
    try {
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
      return double(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0);  // [0]: all pools together
    } catch (const c10::Error&) {
      return 0;  // nothing allocated on the GPU yet
    }
  }
#endif
  if (!device.is_cpu()) return 0;
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

}  // namespace rc
