// Queries the CUDA runtime for visible GPUs. Compiled whenever nvcc is present; on a machine with no
// driver cudaGetDeviceCount fails and the list is empty.
#include <cuda_runtime.h>

#include "ff/common/device.h"

namespace ff {

std::vector<GpuInfo> visible_gpus() {
  std::vector<GpuInfo> gpus;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // Clear the sticky "no driver" error so later CUDA calls see a clean state.
    return gpus;
  }
  for (int index = 0; index < count; ++index) {
    cudaDeviceProp properties{};
    if (cudaGetDeviceProperties(&properties, index) != cudaSuccess) continue;
    gpus.push_back(GpuInfo{index, properties.name, properties.multiProcessorCount, properties.major, properties.minor,
                           properties.totalGlobalMem});
  }
  return gpus;
}

bool built_with_cuda() { return true; }

}  // namespace ff
