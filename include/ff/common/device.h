// What accelerator this process can use. Benchmarks record the device name next to every number.
#pragma once

#include <string>
#include <vector>

namespace ff {

struct GpuInfo {
  int index = 0;
  std::string name;       // "NVIDIA H100 80GB HBM3"
  int sm_count = 0;       // streaming multiprocessors
  int major = 0;          // compute capability
  int minor = 0;
  size_t memory_bytes = 0;
};

// The GPUs visible to this process; empty when the build has no CUDA or no GPU/driver is present.
std::vector<GpuInfo> visible_gpus();

// True when this build compiled CUDA kernels (nvcc was present at build time).
bool built_with_cuda();

}  // namespace ff
