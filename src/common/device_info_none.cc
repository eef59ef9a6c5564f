// Build without CUDA: no GPU is ever visible.
#include "ff/common/device.h"

namespace ff {

std::vector<GpuInfo> visible_gpus() { return {}; }
bool built_with_cuda() { return false; }

}  // namespace ff
