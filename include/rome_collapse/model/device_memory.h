#pragma once
// Peak memory of a phase of work, on the device that does it: the process's resident high-water
// mark on the CPU, the caching allocator's peak of allocated bytes on a GPU.
#include <c10/core/Device.h>

namespace rc {

// Starts a new high-water mark (on the CPU: /proc/self/clear_refs; no-op where unsupported).
void reset_peak_memory(c10::Device device);
// MiB at the high-water mark since the last reset (0 where it cannot be read).
double peak_memory_mib(c10::Device device);

}  // namespace rc
