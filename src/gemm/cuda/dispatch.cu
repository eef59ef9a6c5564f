// Host-side dispatch of the CUDA backend: picks the instantiated kernel for a TileConfig, the scale repack
// kernel and stream-ordered scratch memory. No CUTLASS kernels here (they live in one .cu per configuration).
#include <cuda_runtime.h>

#include <cstdlib>
#include <string_view>

#include "launch.h"

namespace ff::gemm::cuda {

std::string run_dense_pingpong_64x128(const DenseArgs& args);
std::string run_dense_cooperative_128x128(const DenseArgs& args);
std::string run_dense_cooperative_128x128_cluster2x1(const DenseArgs& args);
std::string run_grouped_pingpong_64x128(const GroupedArgs& args);
std::string run_grouped_cooperative_128x128(const GroupedArgs& args);
std::string run_grouped_cooperative_128x128_cluster2x1(const GroupedArgs& args);
std::string run_contiguous_indexed_128x128(const GroupedArgs& args);
std::string run_contiguous_indexed_128x128_cluster1x2(const GroupedArgs& args);
std::string run_dense_cooperative_128x192(const DenseArgs& args);
std::string run_grouped_cooperative_128x192(const GroupedArgs& args);
std::string run_contiguous_indexed_128x192(const GroupedArgs& args);
std::string run_dense_cooperative_128x128_overlap(const DenseArgs& args);
std::string run_dense_cooperative_128x128_stagger(const DenseArgs& args);
std::string run_grouped_cooperative_128x128_overlap(const GroupedArgs& args);
std::string run_grouped_cooperative_128x128_stagger(const GroupedArgs& args);
std::string run_contiguous_indexed_128x128_overlap(const GroupedArgs& args);
std::string run_contiguous_indexed_128x128_stagger(const GroupedArgs& args);
std::string run_dense_cooperative_128x112(const DenseArgs& args);
std::string run_grouped_cooperative_128x112(const GroupedArgs& args);
std::string run_dense_pingpong_64x64(const DenseArgs& args);
std::string run_dense_pingpong_64x32(const DenseArgs& args);
std::string run_dense_pingpong_64x16(const DenseArgs& args);
std::string run_masked_128x128_overlap(const GroupedArgs& args);
std::string run_masked_pingpong_64x128(const GroupedArgs& args);
std::string run_dense_cooperative_256x128(const DenseArgs& args);
std::string run_dense_cooperative_256x128_cluster1x2(const DenseArgs& args);
std::string run_contiguous_indexed_256x128_cluster1x2(const GroupedArgs& args);
std::string run_dense_pingpong_64x192(const DenseArgs& args);
std::string run_dense_pingpong_64x16_overlap(const DenseArgs& args);
std::string run_dense_pingpong_64x32_overlap(const DenseArgs& args);
std::string run_dense_pingpong_64x64_overlap(const DenseArgs& args);
std::string run_dense_pingpong_64x128_overlap(const DenseArgs& args);

std::string run_dense(TileConfig config, const DenseArgs& args) {
  switch (config) {
    case TileConfig::kPingpong64x128: return run_dense_pingpong_64x128(args);
    case TileConfig::kCooperative128x128: return run_dense_cooperative_128x128(args);
    case TileConfig::kCooperative128x128Cluster2x1: return run_dense_cooperative_128x128_cluster2x1(args);
    case TileConfig::kCooperative128x192: return run_dense_cooperative_128x192(args);
    case TileConfig::kCooperative128x112: return run_dense_cooperative_128x112(args);
    case TileConfig::kCooperative128x128Overlap: return run_dense_cooperative_128x128_overlap(args);
    case TileConfig::kCooperative128x128Stagger: return run_dense_cooperative_128x128_stagger(args);
    case TileConfig::kPingpong64x64: return run_dense_pingpong_64x64(args);
    case TileConfig::kPingpong64x32: return run_dense_pingpong_64x32(args);
    case TileConfig::kPingpong64x16: return run_dense_pingpong_64x16(args);
    case TileConfig::kCooperative256x128: return run_dense_cooperative_256x128(args);
    case TileConfig::kCooperative256x128Cluster1x2: return run_dense_cooperative_256x128_cluster1x2(args);
    case TileConfig::kPingpong64x192: return run_dense_pingpong_64x192(args);
    case TileConfig::kPingpong64x16Overlap: return run_dense_pingpong_64x16_overlap(args);
    case TileConfig::kPingpong64x32Overlap: return run_dense_pingpong_64x32_overlap(args);
    case TileConfig::kPingpong64x64Overlap: return run_dense_pingpong_64x64_overlap(args);
    case TileConfig::kPingpong64x128Overlap: return run_dense_pingpong_64x128_overlap(args);
    case TileConfig::kIndexed128x128:
    case TileConfig::kIndexed128x128Cluster1x2:
    case TileConfig::kIndexed128x192:
    case TileConfig::kIndexed128x128Overlap:
    case TileConfig::kIndexed128x128Stagger:
    case TileConfig::kIndexed256x128Cluster1x2:
    case TileConfig::kMasked128x128Overlap:
    case TileConfig::kMasked64x128: break;
  }
  return std::string("no dense kernel for tile config ") + tile_config_name(config);
}

std::string run_grouped(TileConfig config, const GroupedArgs& args) {
  switch (config) {
    case TileConfig::kPingpong64x128: return run_grouped_pingpong_64x128(args);
    case TileConfig::kCooperative128x128: return run_grouped_cooperative_128x128(args);
    case TileConfig::kCooperative128x128Cluster2x1: return run_grouped_cooperative_128x128_cluster2x1(args);
    case TileConfig::kCooperative128x192: return run_grouped_cooperative_128x192(args);
    case TileConfig::kCooperative128x112: return run_grouped_cooperative_128x112(args);
    case TileConfig::kCooperative128x128Overlap: return run_grouped_cooperative_128x128_overlap(args);
    case TileConfig::kCooperative128x128Stagger: return run_grouped_cooperative_128x128_stagger(args);
    case TileConfig::kIndexed128x128Overlap:
      if (args.kind == GroupedKind::kContiguous) return run_contiguous_indexed_128x128_overlap(args);
      break;
    case TileConfig::kIndexed128x128Stagger:
      if (args.kind == GroupedKind::kContiguous) return run_contiguous_indexed_128x128_stagger(args);
      break;
    case TileConfig::kIndexed128x192:
      if (args.kind == GroupedKind::kContiguous) return run_contiguous_indexed_128x192(args);
      break;
    case TileConfig::kIndexed128x128:
      if (args.kind == GroupedKind::kContiguous) return run_contiguous_indexed_128x128(args);
      break;
    case TileConfig::kIndexed128x128Cluster1x2:
      if (args.kind == GroupedKind::kContiguous) return run_contiguous_indexed_128x128_cluster1x2(args);
      break;
    case TileConfig::kIndexed256x128Cluster1x2:
      if (args.kind == GroupedKind::kContiguous) return run_contiguous_indexed_256x128_cluster1x2(args);
      break;
    case TileConfig::kPingpong64x64:
    case TileConfig::kPingpong64x32:
    case TileConfig::kPingpong64x16:
    case TileConfig::kPingpong64x192:
    case TileConfig::kPingpong64x16Overlap:
    case TileConfig::kPingpong64x32Overlap:
    case TileConfig::kPingpong64x64Overlap:
    case TileConfig::kPingpong64x128Overlap:
    case TileConfig::kCooperative256x128:
    case TileConfig::kCooperative256x128Cluster1x2: break;
    case TileConfig::kMasked128x128Overlap:
      if (args.kind == GroupedKind::kMasked) return run_masked_128x128_overlap(args);
      break;
    case TileConfig::kMasked64x128:
      if (args.kind == GroupedKind::kMasked) return run_masked_pingpong_64x128(args);
      break;
  }
  return std::string("no grouped kernel for tile config ") + tile_config_name(config);
}

namespace {

__global__ void repack_kernel(RepackArgs args) {
  const int64_t total = args.groups * args.rows * args.cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = i % args.cols;
    const int64_t row = (i / args.cols) % args.rows;
    const int64_t group = i / (args.cols * args.rows);
    args.dst[group * args.dst_strides[0] + row * args.dst_strides[1] + col * args.dst_strides[2]] =
        args.src[group * args.src_strides[0] + row * args.src_strides[1] + col * args.src_strides[2]];
  }
}

// Contiguous: rows whose index is not a valid group (-1 padding) come out zero (docs/gemm.md). One CTA per
// 128-row block, after the GEMM (which may have computed padding rows inside a run). The block's indices are read
// by one thread each and the padding rows collected in shared memory: a loop over the rows with one index load per
// iteration took 16 us on 32,768 rows (H200, ncu), a latency chain per CTA.
__global__ void zero_padding_rows_kernel(GroupedArgs args) {
  constexpr int kRowBlock = 128;
  __shared__ int padding_rows[kRowBlock];
  __shared__ int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  const int row = int(blockIdx.x) * kRowBlock + int(threadIdx.x);
  if (threadIdx.x < kRowBlock && row < args.m) {
    const int group = args.indices[row];
    if (group < 0 || group >= args.num_groups) padding_rows[atomicAdd(&count, 1)] = row;
  }
  __syncthreads();
  auto* out = static_cast<uint16_t*>(args.out);
  for (int i = 0; i < count; ++i) {
    const int64_t base = int64_t(padding_rows[i]) * args.n;
    for (int col = threadIdx.x; col < args.n; col += blockDim.x) out[base + col] = 0;
  }
}

struct ExpandArgs {
  const float* src;
  float* dst;
  int64_t groups, in_blocks, out_blocks, k_blocks;
  int ratio;  // 128 / granularity
};

__global__ void expand_b_scales_kernel(ExpandArgs args) {
  // The GEMM that reads these scales is launched as a programmatic dependent (launch_gemm): let it launch now;
  // its loads wait for this grid's completion (griddepcontrol.wait), so only its launch and prologue overlap.
  asm volatile("griddepcontrol.launch_dependents;");
  const int64_t total = args.groups * args.out_blocks * args.k_blocks;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t kb = i % args.k_blocks;
    const int64_t block = (i / args.k_blocks) % args.out_blocks;
    const int64_t group = i / (args.k_blocks * args.out_blocks);
    const int64_t source = block / args.ratio < args.in_blocks ? block / args.ratio : args.in_blocks - 1;
    args.dst[i] = args.src[(group * args.in_blocks + source) * args.k_blocks + kb];
  }
}

}  // namespace

std::string expand_b_scales(const float* src, float* dst, int64_t groups, int64_t n, int64_t out_blocks,
                            int64_t k_blocks, int granularity, void* stream) {
  if (granularity <= 0 || 128 % granularity != 0) {
    return "expand_b_scales: granularity " + std::to_string(granularity) + " does not divide 128";
  }
  ExpandArgs args{src, dst, groups, (n + 127) / 128, out_blocks, k_blocks, 128 / granularity};
  const int64_t total = groups * args.out_blocks * k_blocks;
  if (total == 0) return {};
  const int64_t blocks = (total + 255) / 256;
  expand_b_scales_kernel<<<static_cast<unsigned>(blocks < 1024 ? blocks : 1024), 256, 0,
                           static_cast<cudaStream_t>(stream)>>>(args);
  const cudaError_t launched = cudaGetLastError();
  return launched == cudaSuccess ? std::string() : std::string("expand_b_scales: ") + cudaGetErrorString(launched);
}

std::string zero_padding_rows(const GroupedArgs& args) {
  if (args.m == 0) return {};
  zero_padding_rows_kernel<<<(args.m + 127) / 128, 256, 0, static_cast<cudaStream_t>(args.stream)>>>(args);
  const cudaError_t launched = cudaGetLastError();
  return launched == cudaSuccess ? std::string() : std::string("zero padding rows: ") + cudaGetErrorString(launched);
}

std::string repack_scales(const RepackArgs& args) {
  const int64_t total = args.groups * args.rows * args.cols;
  if (total == 0) return {};
  const int64_t blocks = (total + 255) / 256;
  repack_kernel<<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), 256, 0, static_cast<cudaStream_t>(args.stream)>>>(
      args);
  const cudaError_t launched = cudaGetLastError();
  return launched == cudaSuccess ? std::string() : std::string("scale repack: ") + cudaGetErrorString(launched);
}

bool programmatic_launch_enabled() {
  const char* value = std::getenv("FF_GEMM_PDL");
  return value == nullptr || std::string_view(value) != "0";
}

bool expanded_b_scales_requested() {
  const char* value = std::getenv("FF_GEMM_EXPAND_B_SCALES");
  return value != nullptr && std::string_view(value) == "1";
}

std::string allocate_async(void** pointer, size_t bytes, void* stream) {
  const cudaError_t status = cudaMallocAsync(pointer, bytes, static_cast<cudaStream_t>(stream));
  if (status != cudaSuccess) {
    return std::string("cudaMallocAsync of ") + std::to_string(bytes) + " bytes: " + cudaGetErrorString(status);
  }
  return {};
}

void free_async(void* pointer, void* stream) {
  if (pointer != nullptr) (void)cudaFreeAsync(pointer, static_cast<cudaStream_t>(stream));
}

std::string switch_device(int index, int* previous) {
  cudaError_t status = cudaGetDevice(previous);
  if (status == cudaSuccess && *previous != index) status = cudaSetDevice(index);
  if (status != cudaSuccess) return std::string("selecting cuda:") + std::to_string(index) + ": " + cudaGetErrorString(status);
  return {};
}

}  // namespace ff::gemm::cuda
