// The CUDA backend of ff::ep when this build has no CUDA kernels for ep (no nvcc, FF_CUDA=OFF, or "ep" not
// in FF_CUDA_COMPONENTS): creating a buffer says so; nothing else can be reached without one.
#include "ff/ep/cuda_buffer.h"

namespace ff::ep {

struct CudaDispatchHandle::Device {};
struct CudaBuffer::Impl {};

bool cuda_backend_built() { return false; }

CudaBuffer::CudaBuffer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaBuffer::~CudaBuffer() = default;

Result<std::unique_ptr<CudaBuffer>> CudaBuffer::create(const CudaBufferOptions& options) {
  return unimplemented(
      "ep group '{}': the CUDA backend is not built (this build has no CUDA kernels for ep: build with nvcc, "
      "FF_CUDA=ON and 'ep' in FF_CUDA_COMPONENTS)",
      options.group);
}

namespace {
Status not_built() { return unimplemented("the ep CUDA backend is not built"); }
}  // namespace

int CudaBuffer::rank() const { return 0; }
int CudaBuffer::num_ranks() const { return 0; }
int64_t CudaBuffer::num_bytes() const { return 0; }
void CudaBuffer::set_num_sms(int) {}
int CudaBuffer::num_sms() const { return 0; }
void CudaBuffer::set_profiling(bool) {}
std::vector<std::pair<std::string, double>> CudaBuffer::kernel_times_us() { return {}; }
Result<CudaDispatchPlan> CudaBuffer::dispatch_send(const CudaDispatchInput&, void*) { return not_built(); }
Status CudaBuffer::dispatch_receive(const CudaDispatchPlan&, const CudaDispatchOutputs&, void*) { return not_built(); }
Status CudaBuffer::combine(const DeviceRows&, const CudaDispatchHandle&, const float*, void*, float*, void*,
                           const void*, const void*) {
  return not_built();
}
Status CudaBuffer::low_latency_dispatch_send(const DeviceRows&, const int64_t*, int64_t, int64_t, int64_t, bool, void*,
                                             bool) {
  return not_built();
}
Status CudaBuffer::low_latency_dispatch_receive(void*, float*, int32_t*, void*) { return not_built(); }
Status CudaBuffer::low_latency_combine_send(const DeviceRows&, const int64_t*, const float*, void*) {
  return not_built();
}
Status CudaBuffer::low_latency_combine_receive(void*, void*) { return not_built(); }
Status CudaBuffer::synchronize(void*) { return not_built(); }

}  // namespace ff::ep
